"""Bad input on the events route (issue 18): malformed and oversized frames, unknown, forged,
expired and in-use ws tokens, an upgrade without a token or without an upgrade, a flood of
subscribe requests, OAuth over the socket. Each gets a clear HTTP error, error frame or close
code; nothing of it reaches the platform; another app's socket goes on receiving events."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import time
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest

from tests.events.apps import PRESENCE, answer_to, connect, request_frame, subscribe_frame, ws_token
from tests.support.proxy import APP_KEY

FRAME_CAP = 4096
SUBSCRIBE_CAP = 5


def raw_upgrade(url: str, target: str, extra: str = "") -> tuple[int, dict]:
    """An upgrade request written byte by byte (no client library to fix it up); the status
    and the JSON body of the answer."""
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.strip() else {}


def hang_up_mid_upgrade(url: str, target: str) -> None:
    """Half an upgrade request, then the connection closes (a client giving up)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n".encode())
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()  # the whole request, then gone
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())


async def scenario(proxy_url: str, emulator) -> dict:
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    async with httpx.AsyncClient(base_url=proxy_url, headers=headers, timeout=30) as http, \
            aiohttp.ClientSession() as session:
        # a well-behaved app, subscribed before the abuse starts
        good_token = await ws_token(http)
        good, _ = await connect(session, good_token)
        await good.send_str(subscribe_frame("g1", [PRESENCE]))
        assert (await answer_to(good, "g1"))[0]["status"] == 200
        before = emulator.counters()

        # tokens: missing, unknown, forged, in use, then reused once its socket closed
        path = urlsplit(good_token["uri"]).path
        status, body = await asyncio.to_thread(raw_upgrade, proxy_url, path)
        assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-MISSING"), body
        status, body = await asyncio.to_thread(raw_upgrade, proxy_url,
                                               path + "?access_token=U0pDMDFQMDdQQ")
        assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-UNKNOWN"), body
        forged = good_token["ws_access_token"].rsplit(".", 1)[0] + ".AAAA"
        status, body = await asyncio.to_thread(raw_upgrade, proxy_url,
                                               f"{path}?access_token={forged}")
        assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-UNKNOWN"), body
        status, body = await asyncio.to_thread(
            raw_upgrade, proxy_url, f"{path}?access_token={good_token['ws_access_token']}")
        assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-IN-USE"), body
        status, body = await asyncio.to_thread(
            raw_upgrade, proxy_url, path, f"Authorization: Bearer {APP_KEY}\r\n")
        assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-UNKNOWN"), body  # a client key
        plain = await http.get(path)
        assert (plain.status_code, plain.json()["errorCode"]) == (400, "TPX-WS-UPGRADE-REQUIRED")

        figures: dict = {}
        # an app that hangs up in the middle of its upgrade leaves its token usable
        dropped = await ws_token(http)
        await asyncio.to_thread(hang_up_mid_upgrade, proxy_url,
                                f"{path}?access_token={dropped['ws_access_token']}")
        for attempt in range(30):  # bounded: the proxy notices the hang-up within moments
            try:
                again, _ = await connect(session, dropped)
                figures["hang_up_retries"] = attempt
                break
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401 and attempt < 29, exc
                await asyncio.sleep(0.1)
        await again.close()

        # frames: each malformed one gets an Error frame and the socket stays usable
        token = await ws_token(http)
        ws, _ = await connect(session, token)
        bad_frames = ["garbage", "[]", '{"type": "Heartbeat"}', "[1, 2, 3]",
                      '[{"type": "Nope", "messageId": "n1"}]', '[{"type": "Heartbeat"}]',
                      '[{"type": "ClientRequest", "messageId": "c1", "method": "GET"}]',
                      '[{"type": "ClientRequest", "messageId": "c2", "method": "BREW", '
                      '"path": "/restapi/v1.0/x"}]']
        for text in bad_frames:
            await ws.send_str(text)
            frame = json.loads((await ws.receive(timeout=10)).data)
            assert frame[1]["errorCode"] == "TPX-WS-BAD-FRAME", (text, frame)
        await ws.send_bytes(b"\x00\x01binary")
        frame = json.loads((await ws.receive(timeout=10)).data)
        assert frame[1]["errorCode"] == "TPX-WS-BAD-FRAME"
        await ws.send_str(request_frame("o1", "POST", "/restapi/oauth/token"))
        frame = await answer_to(ws, "o1")
        assert (frame[0]["status"], frame[1]["errorCode"]) == (403, "TPX-OAUTH-MANAGED")
        await ws.send_str(json.dumps([{"type": "Heartbeat", "messageId": "h1"}]))
        assert (await answer_to(ws, "h1"))[0]["type"] == "Heartbeat"  # still usable

        # a flood of subscribe requests: the first few go, the rest are refused here
        for i in range(30):
            await ws.send_str(subscribe_frame(f"f{i}", [PRESENCE + f"?n={i}"]))
        by_id: dict[str, list] = {}
        while len(by_id) < 30:  # refusals come at once, the accepted ones once subscribed
            frame = json.loads((await ws.receive(timeout=30)).data)
            by_id[frame[0]["messageId"]] = frame
        answers = [by_id[f"f{i}"] for i in range(30)]
        statuses = [a[0]["status"] for a in answers]
        refused = [a for a in answers if a[0]["status"] == 429]
        assert statuses.count(200) == SUBSCRIBE_CAP and len(refused) == 30 - SUBSCRIBE_CAP
        assert all(a[1]["errorCode"] == "TPX-WS-SUBSCRIBE-RATE" for a in refused)
        figures["flood"] = {"ok": statuses.count(200), "refused": len(refused)}
        mid = emulator.counters()

        # an oversized frame closes that socket with 1009, and only that one
        await ws.send_str("x" * (FRAME_CAP * 3))
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
        assert ws.close_code == 1009, ws.close_code

        # too many malformed frames: closed with 1008
        ws2, _ = await connect(session, await ws_token(http))
        for _ in range(30):
            await ws2.send_str("nope")
        codes = None
        for _ in range(40):
            message = await ws2.receive(timeout=10)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                codes = ws2.close_code
                break
        assert codes == 1008, codes

        # the good app never noticed
        emitted = await asyncio.to_thread(emulator.ws_emit, PRESENCE, {"seq": 1})
        assert emitted >= 1
        event = json.loads((await good.receive(timeout=15)).data)
        assert event[0]["type"] == "ServerNotification" and event[1]["body"] == {"seq": 1}
        assert not good.closed
        after = emulator.counters()
        figures["platform"] = {k: (before[k], mid[k], after[k]) for k in (
            "ws_client_requests", "ws_subscription_requests", "ws_token_calls", "ws_connects")}
        # nothing of the abuse reached the platform: no REST over the socket, no ws token or
        # connect; only the flood's 5 accepted subscribes changed the union (batched)
        for key in ("ws_token_calls", "ws_connects"):
            assert after[key] == before[key], (key, figures)
        subscribes = after["ws_subscription_requests"] - before["ws_subscription_requests"]
        assert after["ws_client_requests"] - before["ws_client_requests"] == subscribes
        assert subscribes <= SUBSCRIBE_CAP
        await good.close()
        return figures


@pytest.mark.timeout(180)
def test_bad_input_is_refused_and_goes_nowhere(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, events={"max_frame_bytes": FRAME_CAP,
                                                "subscribe_per_minute": SUBSCRIBE_CAP})
    figures = asyncio.run(scenario(proxy.url, emulator))
    metrics = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    in_use = re.search(r'tokenproxy_events_app_ws_tokens_total\{outcome="in_use"\} (\d+)',
                       metrics)
    assert in_use and int(in_use.group(1)) >= 1  # + retries while a hang-up was noticed
    for line in ('tokenproxy_events_app_ws_tokens_total{outcome="missing"} 1.0',
                 'tokenproxy_events_refused_frames_total{reason="too_big"} 1.0',
                 'tokenproxy_events_refused_frames_total{reason="subscribe_rate"} 25.0'):
        assert line in metrics, line
    logs = proxy.logs()
    assert "TPXWS1." not in logs and "access_token=" not in logs  # no ws token in the logs
    print(f"figures events-bad-input: {figures}")


@pytest.mark.timeout(60)
def test_an_expired_ws_token_is_refused(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, events={"ws_token_ttl": 5})
    token = httpx.post(proxy.url + "/restapi/oauth/wstoken",
                       headers={"Authorization": f"Bearer {APP_KEY}"}, timeout=10).json()
    assert token["expires_in"] == 5
    time.sleep(5.2)
    path = urlsplit(token["uri"]).path
    status, body = raw_upgrade(proxy.url, f"{path}?access_token={token['ws_access_token']}")
    assert (status, body["errorCode"]) == (401, "TPX-WS-TOKEN-EXPIRED"), body
    assert emulator.counters()["ws_token_calls"] == 0  # apps' tokens cost the platform nothing
