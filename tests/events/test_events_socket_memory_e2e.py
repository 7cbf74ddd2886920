"""A socket that lives for days must not hold its history: mitmproxy keeps every message of a
WebSocket flow (``flow.websocket.messages``) unless the addon lets go of them. 8,000 frames of
3 KB each way through one app socket (24 MB each way) grow the proxy's memory by far less than
what holding them would cost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.events.apps import connect, ws_token
from tests.support.proxy import APP_KEY

FRAMES = 8_000
PADDING = "x" * 3_000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def exchange(proxy_url: str, pid: int) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30,
                                 headers={"Authorization": f"Bearer {APP_KEY}"}) as http, \
            aiohttp.ClientSession() as session:
        ws, _ = await connect(session, await ws_token(http))

        async def rounds(count: int) -> None:
            for start in range(0, count, 50):  # 50 in flight, answered in order
                for i in range(start, start + 50):
                    await ws.send_str(json.dumps([{"type": "Heartbeat", "messageId": f"h{i}"},
                                                  PADDING]))
                for _ in range(50):
                    frame = json.loads((await ws.receive(timeout=30)).data)
                    assert frame[0]["type"] == "Heartbeat"

        await rounds(500)  # warm up: buffers, caches
        before = rss_kib(pid)
        await rounds(FRAMES)
        after = rss_kib(pid)
        await ws.close()
        return before, after


@pytest.mark.timeout(300)
def test_a_long_lived_socket_does_not_keep_its_messages(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    before, after = asyncio.run(exchange(proxy.url, proxy.proc.pid))
    held = FRAMES * len(PADDING) // 1024  # KiB one direction's messages would take
    print(f"figures events-socket-memory: {FRAMES} frames of {len(PADDING)} B each way, proxy "
          f"RSS {before} -> {after} KiB (+{after - before} KiB; holding one direction's "
          f"messages would be +{held} KiB)")
    assert after - before < held // 4
