"""The socket relay (issue 18, items 2-3): REST over the socket returns the platform's answer
with links pointing at the proxy; a recovery the platform refuses is hidden from the app except
for the platform's own signal (ConnectionDetails recoveryState Failed) while its subscription is
re-created and events flow on; an app that reconnects with its wsc gets what it missed; the
upstream is HTTPS (wss://) with its certificate verified; the metrics count all of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.events.apps import (
    EXT,
    PRESENCE,
    answer_to,
    connect,
    request_frame,
    subscribe_frame,
    ws_token,
)
from tests.support.certs import make_tls_files
from tests.support.proxy import APP_KEY, jwt_account, start_proxy
from tests.upstream.test_tls_resumption_e2e import TlsRelay

HEADERS = {"Authorization": f"Bearer {APP_KEY}"}


async def next_notification(ws: aiohttp.ClientWebSocketResponse, within: float = 20) -> list:
    while True:
        frame = json.loads((await ws.receive(timeout=within)).data)
        if frame[0]["type"] == "ServerNotification":
            return frame


async def rest_and_recovery(proxy_url: str, emulator) -> dict:
    async with httpx.AsyncClient(base_url=proxy_url, headers=HEADERS, timeout=30) as http, \
            aiohttp.ClientSession() as session:
        token = await ws_token(http)
        ws, details = await connect(session, token)
        assert "recoveryState" not in details[1] and details[0]["wsc"]["token"]
        assert not details[0]["wsc"]["token"].startswith(("S", "W"))  # never the platform's

        # REST over the socket: the platform's answer, links rewritten as for REST
        await ws.send_str(request_frame("r1", "GET", EXT))
        over_ws = await answer_to(ws, "r1")
        over_http = (await http.get(EXT)).json()
        assert over_ws[0]["status"] == 200 and over_ws[0]["type"] == "ClientRequest"
        assert over_ws[1] == over_http
        assert over_ws[1]["uri"].startswith(proxy_url)

        await ws.send_str(subscribe_frame("s1", [PRESENCE]))
        subscribed = await answer_to(ws, "s1")
        sub_id = subscribed[1]["id"]
        await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": 1})
        first = await next_notification(ws)
        assert first[1]["subscriptionId"] == sub_id and first[1]["body"] == {"seq": 1}

        # the platform refuses the recovery: the app hears recoveryState Failed once, keeps its
        # socket and its subscription id, and the re-created subscription delivers
        await asyncio.to_thread(emulator.ws_refuse_recovery, True)
        await asyncio.to_thread(emulator.ws_drop, "close")
        signal = json.loads((await ws.receive(timeout=20)).data)
        assert signal[0]["type"] == "ConnectionDetails", signal
        assert signal[1]["recoveryState"] == "Failed"
        await asyncio.to_thread(emulator.ws_refuse_recovery, False)
        for _ in range(50):  # until the re-created subscription is in place (bounded)
            sessions = await asyncio.to_thread(emulator.ws_sessions)
            if any(s["connected"] and s["subscription"] for s in sessions):
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": 2})
        second = await next_notification(ws)
        assert second[1]["subscriptionId"] == sub_id and second[1]["body"] == {"seq": 2}
        assert not ws.closed

        # the app drops its own socket; events meanwhile wait in its session; it comes back
        # with a new ws token and its wsc, as the SDKs do
        wsc = signal[0]["wsc"]["token"]
        await ws.close()
        await asyncio.sleep(0.3)
        for seq in (3, 4):
            await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": seq})
        await asyncio.sleep(0.3)
        again, details = await connect(session, await ws_token(http), wsc=wsc)
        assert details[1]["recoveryState"] == "Successful"
        missed = [await next_notification(again), await next_notification(again)]
        assert [m[1]["body"]["seq"] for m in missed] == [3, 4]
        assert all(m[1]["subscriptionId"] == sub_id for m in missed)
        assert missed[1][0]["wsc"]["sequence"] > missed[0][0]["wsc"]["sequence"]
        # an unknown wsc: a new session, told Failed, nothing of anyone else's
        other, details = await connect(session, await ws_token(http), wsc="TPXWSC.nope")
        assert details[1]["recoveryState"] == "Failed"
        await other.close()
        await again.close()
        return {"rest_over_ws": over_ws[0]["status"]}


@pytest.mark.timeout(180)
def test_rest_over_ws_recovery_failed_and_app_recovery(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    asyncio.run(rest_and_recovery(proxy.url, emulator))
    metrics = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    for line in ('tokenproxy_events_upstream_connects_total{account="main",outcome="lost"} 1.0',
                 'tokenproxy_events_relayed_total{account="main",kind="client_request"} 1.0',
                 'tokenproxy_events_upstream_sockets{account="main"} 1.0'):
        assert line in metrics, line
    assert 'tokenproxy_events_relayed_total{account="main",kind="notification"} 4.0' in metrics


async def over_wss(proxy_url: str, emulator) -> None:
    async with httpx.AsyncClient(base_url=proxy_url, headers=HEADERS, timeout=30) as http, \
            aiohttp.ClientSession() as session:
        ws, _ = await connect(session, await ws_token(http))
        await ws.send_str(subscribe_frame("s1", [PRESENCE]))
        assert (await answer_to(ws, "s1"))[0]["status"] == 200
        await asyncio.to_thread(emulator.ws_drop, "abort")
        await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": 1})
        event = await next_notification(ws)
        assert event[1]["body"] == {"seq": 1}
        await ws.close()


@pytest.mark.timeout(120)
def test_the_upstream_socket_is_wss_with_a_verified_certificate(tmp_path: Path,
                                                                emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    host, port = emulator.url.removeprefix("http://").split(":")
    cert_dir = tmp_path / "tls"
    ca = make_tls_files(cert_dir)
    with TlsRelay((host, int(port)), cert_dir) as relay:
        emulator.ws_set_policy(ws_public_uri=f"wss://127.0.0.1:{relay.port}/ws")
        proxy = start_proxy(tmp_path, f"https://127.0.0.1:{relay.port}",
                            accounts=[jwt_account()], env={"SSL_CERT_FILE": str(ca)})
        try:
            asyncio.run(over_wss(proxy.url, emulator))
            upgrades = [c for c in relay.connections if c[1].startswith("GET /ws?")]
        finally:
            proxy.stop()
    assert len(upgrades) >= 2  # the first socket and its recovery, both over TLS
    assert emulator.counters()["ws_recoveries_successful"] >= 1


async def rest_burst(proxy_url: str, count: int) -> list[list]:
    async with httpx.AsyncClient(base_url=proxy_url, headers=HEADERS, timeout=30) as http, \
            aiohttp.ClientSession() as session:
        ws, _ = await connect(session, await ws_token(http))
        answers = []
        for start in range(0, count, 8):  # at most 8 in flight (maxActiveRequests is 10)
            batch = range(start, min(count, start + 8))
            for i in batch:
                await ws.send_str(request_frame(f"r{i}", "GET", EXT))
            by_id: dict[str, list] = {}
            while len(by_id) < len(batch):
                frame = json.loads((await ws.receive(timeout=30)).data)
                by_id[frame[0]["messageId"]] = frame
            answers += [by_id[f"r{i}"] for i in batch]
        await ws.close()
        return answers


@pytest.mark.timeout(120)
def test_rest_over_the_socket_spends_the_api_budget(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0", "--api-rate", "enforce",
                                "--api-limits", "light=5", "--api-window", "30")
    proxy = proxy_factory(emulator.url, rate_limits={"mode": "enforce", "max_wait": 0.5})
    answers = asyncio.run(rest_burst(proxy.url, 16))
    statuses = [a[0]["status"] for a in answers]
    refused = [a for a in answers if a[0]["status"] == 429]
    counters = emulator.counters()
    print(f"figures events-rest-budget: {statuses.count(200)} served, {len(refused)} refused "
          f"by the proxy, platform 429s {dict(counters['api_429_by_group'])}")
    assert statuses.count(200) == 5 and len(refused) == 11
    assert all(a[0]["headers"]["X-Tokenproxy-Error"] == "TPX-RATE-LIMITED" for a in refused)
    assert all(a[1]["errorCode"] == "CMN-301" for a in refused)
    assert not counters["api_429_by_group"]  # the platform never had to refuse one
