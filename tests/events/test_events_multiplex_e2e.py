"""200 app sockets on one account, different filters (issue 18, second acceptance point): every
app gets exactly the events its filters match, in order; the platform sees at most the
configured number of upstream sockets and ws-token calls within the Auth budget; every app is
connected within 5 s."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
import httpx
import pytest

from tests.events.apps import answer_to, connect, subscribe_frame, ws_token
from tests.support.proxy import APP_KEY

APPS = 200
GROUPS = 10
EVENTS_PER_GROUP = 3
UPSTREAM_SOCKETS = 2


def presence(group: int) -> str:
    return f"/restapi/v1.0/account/~/extension/{200 + group}/presence"


def groups_of(app: int) -> set[int]:
    """Each app one group; every third app a second one (overlapping filters)."""
    return {app % GROUPS, (app + 1) % GROUPS} if app % 3 == 0 else {app % GROUPS}


async def run_apps(proxy_url: str, emulator) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=proxy_url, headers=headers, timeout=30,
                                 limits=limits) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        tokens = await asyncio.gather(*(ws_token(http) for _ in range(APPS)))
        tokened = time.monotonic()

        async def open_app(app: int) -> aiohttp.ClientWebSocketResponse:
            ws, _ = await connect(session, tokens[app])
            return ws

        # every app connects at once: each is connected when its ConnectionDetails is in
        sockets = await asyncio.gather(*(open_app(i) for i in range(APPS)))
        connected = time.monotonic() - tokened

        async def subscribe(app: int) -> None:
            ws = sockets[app]
            await ws.send_str(subscribe_frame(f"s{app}", [presence(g) for g in groups_of(app)]))
            answer = await answer_to(ws, f"s{app}")
            assert answer[0]["status"] == 200, answer
            assert answer[0]["headers"]["WSG-SubscriptionId"] == answer[1]["id"]

        await asyncio.gather(*(subscribe(i) for i in range(APPS)))
        subscribed = time.monotonic() - started
        sent: dict[int, list[int]] = {g: [] for g in range(GROUPS)}
        seq = 0
        for _ in range(EVENTS_PER_GROUP):
            for group in range(GROUPS):
                seq += 1
                sent[group].append(seq)
                await asyncio.to_thread(emulator.ws_emit, presence(group), {"seq": seq})
        # nobody asked for this one
        await asyncio.to_thread(emulator.ws_emit, presence(GROUPS), {"seq": -1})

        async def collect(app: int) -> list[int]:
            expected = sum(len(sent[g]) for g in groups_of(app))
            got: list[int] = []
            ws = sockets[app]
            while len(got) < expected:
                message = await ws.receive(timeout=30)
                frame = json.loads(message.data)
                if frame[0]["type"] == "ServerNotification":
                    got.append(frame[1]["body"]["seq"])
            try:  # anything more would be a wrong delivery
                extra = await ws.receive(timeout=0.3)
                got.append(json.loads(extra.data)[1]["body"]["seq"])
            except TimeoutError:
                pass
            return got

        received = await asyncio.gather(*(collect(i) for i in range(APPS)))
        for ws in sockets:
            await ws.close()
        return {"connected": connected, "tokens": tokened - started, "subscribed": subscribed,
                "received": received, "sent": sent}


@pytest.mark.timeout(300)
def test_200_app_sockets_share_few_upstream_sockets(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "5")  # the platform's Auth group: 5 a minute
    proxy = proxy_factory(emulator.url, auth_budget_calls=5,
                          events={"upstream_sockets": UPSTREAM_SOCKETS})
    result = asyncio.run(run_apps(proxy.url, emulator))
    sent = result["sent"]
    for app, got in enumerate(result["received"]):
        wanted = sorted(s for g in groups_of(app) for s in sent[g])
        assert got == wanted, (app, got, wanted)  # exactly its events, in order
    counters = emulator.counters()
    status = proxy.status()
    print(f"figures events-multiplex: {APPS} ws tokens in {result['tokens']:.2f} s, then "
          f"{APPS} sockets connected in {result['connected']:.2f} s, all subscribed "
          f"{result['subscribed']:.2f} s after the start; platform: ws_connects="
          f"{counters['ws_connects']} open_max={counters.get('ws_open_max')} ws_token_calls="
          f"{counters['ws_token_calls']} subscription requests="
          f"{counters['ws_subscription_requests']} notifications sent="
          f"{counters['ws_notifications_sent']}; events relayed "
          f"{sum(len(r) for r in result['received'])}")
    assert result["connected"] < 5.0
    assert counters["ws_connects"] <= UPSTREAM_SOCKETS
    assert counters["ws_token_calls"] <= UPSTREAM_SOCKETS  # within the Auth budget (5)
    assert not counters["ws_refused_by_code"]  # no upgrade refused, nothing rate-limited
    assert counters["ws_subscription_requests"] < APPS // 4  # merged, not one per app
    assert status["events"]["accounts"]["main"]["upstream_sockets"] <= UPSTREAM_SOCKETS
    # the apps closed their sockets; their sessions wait recovery_timeout for them
    table = subprocess.run([sys.executable, "-m", "proxy_addon", "status", "--url",
                            proxy.admin_url], capture_output=True, text=True, timeout=30)
    row = next(line.split() for line in table.stdout.splitlines()
               if line.startswith("main ") and len(line.split()) == 5)
    assert row[1:3] == ["0", str(APPS)], table.stdout  # app sockets, app sessions
