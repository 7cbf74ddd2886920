"""Scenario ``events`` (issue 18): notifications fanned out to many app sockets, straight from
the platform's gateway (the baseline: every app holds its own platform socket, as without the
proxy) and through tokenproxy (one platform socket for the account, the proxy fans out).

APPS WebSocket apps (aiohttp, in this process) subscribe to one presence filter; the emulator
emits numbered events (``POST /_emulator/ws/emit``, timestamped here): first one at a time, spaced,
for the latency of one event to every app (p50/p99 over all deliveries), then a burst, for
deliveries per second. Reported beside: what each way costs the platform (sockets, ws-token
calls, subscription requests).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import httpx

from bench.ratelimit import platform_token
from bench.report import table
from bench.scenario import RunOptions, Scenario
from tests.support.emulator import start_emulator
from tests.support.proxy import APP_KEY, jwt_account, start_proxy

APPS = 50
SPACED, QUICK_SPACED = 100, 30
BURST, QUICK_BURST = 300, 60
PRESENCE = "/restapi/v1.0/account/~/extension/~/presence"
DIRECT, PROXY = "straight to the platform", "through tokenproxy"
EMULATOR_ARGS = ("--auth-rate", "0", "--ws-max-connections", str(APPS + 10))


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # s, emit call -> delivery
    burst_seconds: float = 0.0
    burst_deliveries: int = 0
    platform: dict = field(default_factory=dict)


async def _apps(base_url: str, bearer: str, emulator, spaced: int, burst: int) -> Run:
    run = Run()
    async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {bearer}"}) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for i in range(APPS):
            token = (await http.post("/restapi/oauth/wstoken")).json()
            ws = await session.ws_connect(f"{token['uri']}?access_token="
                                          f"{token['ws_access_token']}")
            await ws.receive(timeout=15)  # ConnectionDetails
            await ws.send_str(json.dumps([
                {"type": "ClientRequest", "messageId": f"s{i}", "method": "POST",
                 "path": "/restapi/v1.0/subscription"},
                {"eventFilters": [PRESENCE], "deliveryMode": {"transportType": "WebSocket"}}]))
            while json.loads((await ws.receive(timeout=30)).data)[0].get("messageId") != f"s{i}":
                pass
            sockets.append(ws)
        emitted: dict[int, float] = {}
        arrivals: list[tuple[int, float]] = []
        wanted = [0]
        reached = asyncio.Event()

        async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    return
                frame = json.loads(message.data)
                if frame[0].get("type") == "ServerNotification":
                    arrivals.append((frame[1]["body"]["seq"], time.perf_counter()))
                    if len(arrivals) >= wanted[0]:
                        reached.set()

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]

        async def wait_for(count: int, limit: float) -> None:
            wanted[0] = count
            reached.clear()
            if len(arrivals) < count:
                try:
                    await asyncio.wait_for(reached.wait(), limit)
                except TimeoutError:
                    pass

        for seq in range(spaced):
            emitted[seq] = time.perf_counter()
            await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": seq})
            await wait_for((seq + 1) * APPS, 10)
        run.latencies = [at - emitted[seq] for seq, at in arrivals]
        arrivals.clear()
        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=emulator.url, timeout=30) as admin:
            for seq in range(spaced, spaced + burst):
                await admin.post("/_emulator/ws/emit",
                                 json={"event": PRESENCE, "body": {"seq": seq}})
        await wait_for(burst * APPS, 60)
        run.burst_deliveries = len(arrivals)
        run.burst_seconds = (max(at for _, at in arrivals) - started) if arrivals else 0.0
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
    run.platform = emulator.counters()
    return run


def _direct(spaced: int, burst: int) -> Run:
    with start_emulator(*EMULATOR_ARGS) as emulator:
        token = platform_token(emulator.url)
        emulator.reset_counters()
        return asyncio.run(_apps(emulator.url, token, emulator, spaced, burst))


def _through_proxy(options: RunOptions, spaced: int, burst: int) -> Run:
    with start_emulator(*EMULATOR_ARGS) as emulator:
        proxy = start_proxy(options.workdir, emulator.url, accounts=[jwt_account()])
        try:
            httpx.get(proxy.url + "/restapi/v1.0/account/~/extension/~", timeout=30,
                      headers={"Authorization": f"Bearer {APP_KEY}"}).raise_for_status()
            emulator.reset_counters()
            return asyncio.run(_apps(proxy.url, APP_KEY, emulator, spaced, burst))
        finally:
            proxy.stop()


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "—"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def run(options: RunOptions) -> str:
    spaced = QUICK_SPACED if options.quick else SPACED
    burst = QUICK_BURST if options.quick else BURST
    results = {DIRECT: _direct(spaced, burst), PROXY: _through_proxy(options, spaced, burst)}
    rows = []
    for target, result in results.items():
        p = result.platform
        rate = result.burst_deliveries / result.burst_seconds if result.burst_seconds else 0.0
        rows.append((target, f"{len(result.latencies):,}", _ms(result.latencies, 0.5),
                     _ms(result.latencies, 0.99), f"{result.burst_deliveries:,}",
                     f"{rate:,.0f}", str(p.get("ws_connects", 0)),
                     str(p.get("ws_token_calls", 0)), str(p.get("ws_subscription_requests", 0)),
                     f"{p.get('ws_notifications_sent', 0):,}"))
    direct, proxy = results[DIRECT], results[PROXY]
    ratio = (statistics.median(proxy.latencies) / statistics.median(direct.latencies)
             if direct.latencies and proxy.latencies else 0.0)
    lines = [
        f"{APPS} WebSocket apps subscribe to one presence filter; the emulator emits {spaced} "
        f"events one at a time (the next once every app has the last), then {burst} back to "
        "back. Latency: from the emit call to an app's receipt, over every delivery.",
        "",
        table(["target", "deliveries timed", "p50 ms", "p99 ms", "burst deliveries",
               "burst deliveries/s", "platform sockets", "platform ws-token calls",
               "platform subscription requests", "platform notifications sent"], rows),
        "",
        f"- Through tokenproxy the platform holds 1 socket instead of {APPS}, sends 1 "
        f"notification per event instead of {APPS}, and the account spends 1 ws-token call "
        f"(Auth budget) instead of {APPS}.",
        f"- Median latency through tokenproxy: {ratio:.2f}x the direct one (one more hop: the "
        "proxy's upstream socket, its fan-out, mitmproxy's relay to each app).",
    ]
    return "\n".join(lines)


SCENARIO = Scenario(
    name="events",
    title="Events: notifications fanned out to 50 app sockets, straight vs through tokenproxy",
    summary="50 WebSocket apps on one filter: delivery latency and burst rate, and what each "
            "way costs the platform (sockets, ws tokens, notifications)",
    run=run,
)
