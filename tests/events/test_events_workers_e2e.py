"""Events with ``--workers 2`` (what ``make run`` starts): a ws token issued by one worker opens a
socket on the other (the token is signed with a key derived from the shared store key), and the
apps spread over both workers get every event they subscribed to."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest

from tests.events.apps import PRESENCE, answer_to, connect, subscribe_frame
from tests.support.proxy import (
    APP_KEY,
    STORE_KEY,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

APPS = 12


async def apps_on_two_workers(proxy_url: str, emulator) -> list[int]:
    async with aiohttp.ClientSession() as session:
        sockets = []
        for i in range(APPS):
            # a new connection per token request: SO_REUSEPORT spreads them over the workers
            async with httpx.AsyncClient(base_url=proxy_url, timeout=30,
                                         headers={"Authorization": f"Bearer {APP_KEY}"}) as http:
                token = (await http.post("/restapi/oauth/wstoken")).json()
            ws, _ = await connect(session, token)
            await ws.send_str(subscribe_frame(f"s{i}", [PRESENCE]))
            assert (await answer_to(ws, f"s{i}"))[0]["status"] == 200
            sockets.append(ws)
        for seq in (1, 2, 3):
            await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": seq})
        received = []
        for ws in sockets:
            got = []
            while len(got) < 3:
                frame = json.loads((await ws.receive(timeout=20)).data)
                if frame[0]["type"] == "ServerNotification":
                    got.append(frame[1]["body"]["seq"])
            assert got == [1, 2, 3]
            received.append(len(got))
            await ws.close()
        return received


@pytest.mark.timeout(180)
def test_ws_tokens_and_events_across_two_workers(tmp_path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    config = tmp_path / "workers.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "", "upstream": emulator.url,
         "auth_budget_calls": 0}, [jwt_account()], [{"name": "app", "account": "main",
                                                     "key": APP_KEY}],
        {"backend": "sqlite", "path": str(tmp_path / "tokens.db")}))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    try:
        received = asyncio.run(apps_on_two_workers(proxy.url, emulator))
    finally:
        proxy.stop()
    counters = emulator.counters()
    print(f"figures events-workers: {APPS} apps over 2 workers, {sum(received)} events; "
          f"platform sockets {counters['ws_connects']}")
    assert sum(received) == 3 * APPS
    assert counters["ws_connects"] == 2  # both workers served apps: one platform socket each
