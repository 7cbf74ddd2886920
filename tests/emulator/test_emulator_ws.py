"""The emulator's WebSocket notifications: wstoken, the /ws gateway's frames, subscriptions,
events, recovery, faults and counters, against a real emulator process and a real WebSocket
client (aiohttp). Platform references: ringcentral-api-docs docs/notifications/websockets/*.md.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from tests.emulator.emu_client import EXT, bearer, client, jwt_login, ws_url, wstoken
from tests.support.emulator import Emulator, start_emulator

SUB = "/restapi/v1.0/subscription"
STORE = "/restapi/v1.0/account/~/extension/~/message-store"
INSTANT = "/restapi/v1.0/account/~/extension/~/message-store/instant?type=SMS"
DETAILS_META = ["type", "messageId", "status", "wsc", "headers"]
DETAILS_BODY = ["creationTime", "maxConnectionsPerSession", "recoveryBufferSize",
                "recoveryTimeout", "idleTimeout", "absoluteTimeout", "maxActiveRequests"]
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    emu = start_emulator("--auth-rate", "0", "--session-cap", "1000")
    yield emu
    emu.stop()


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with client(emu) as c:
        yield c


def unique_presence() -> str:
    """A presence filter no other test subscribes to (tests share one emulator)."""
    return f"/restapi/v1.0/account/~/extension/~/presence?tag={uuid.uuid4().hex}"


class Ws:
    """A WebSocket client of the gateway: frames as [meta, body?]; notifications that arrive
    while waiting for something else are kept in ``notes``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.notes: list[list[Any]] = []

    async def frame(self, wait: float = TIMEOUT) -> list[Any]:
        msg = await self.ws.receive(timeout=wait)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        assert isinstance(frame, list)
        return frame

    async def until(self, want: Callable[[dict], bool], wait: float = TIMEOUT) -> list[Any]:
        while True:
            frame = await self.frame(wait)
            if want(frame[0]):
                return frame
            assert frame[0]["type"] == "ServerNotification", frame
            self.notes.append(frame)

    async def note(self, wait: float = TIMEOUT) -> list[Any]:
        if self.notes:
            return self.notes.pop(0)
        return await self.until(lambda m: m["type"] == "ServerNotification", wait)

    async def request(self, method: str, path: str, body: Any = None,
                      **meta: Any) -> tuple[dict, Any]:
        message_id = str(uuid.uuid4())
        frame: list[Any] = [{"type": "ClientRequest", "messageId": message_id,
                             "method": method, "path": path, **meta}]
        if body is not None:
            frame.append(body)
        await self.ws.send_str(json.dumps(frame))
        answer = await self.until(lambda m: m.get("messageId") == message_id)
        return answer[0], answer[1] if len(answer) > 1 else None

    async def subscribe(self, filters: list[str]) -> dict:
        meta, body = await self.request("POST", SUB, {
            "eventFilters": filters, "deliveryMode": {"transportType": "WebSocket"}})
        assert meta["status"] == 200, body
        return body

    async def no_frame(self, wait: float = 0.3) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await self.frame(wait)


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 45)
    return asyncio.run(bounded())


async def connect(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[Ws, list]:
    ws = Ws(await session.ws_connect(url, **kw))
    details = await ws.frame()
    assert details[0]["type"] == "ConnectionDetails", details
    return ws, details


def new_ws_token(http: httpx.Client, access: str) -> dict:
    response = wstoken(http, access)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------ tests
def test_wstoken_and_connection_details(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    response = wstoken(http, login["access_token"])
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["ws_access_token", "uri", "expires_in"]
    port = emu.url.rsplit(":", 1)[1]
    assert body["uri"] == f"ws://127.0.0.1:{port}/ws"
    assert body["expires_in"] == 600

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, (meta, details) = await connect(s, ws_url(body))
            assert list(meta) == DETAILS_META
            assert meta["status"] == 200 and meta["headers"]["RCRequestId"]
            assert meta["wsc"]["sequence"] == 1 and meta["wsc"]["token"]
            assert list(details) == DETAILS_BODY
            assert details == {**details, "maxConnectionsPerSession": 50,
                               "recoveryBufferSize": 100, "recoveryTimeout": 180,
                               "idleTimeout": 1800, "absoluteTimeout": 86400,
                               "maxActiveRequests": 10}
            await ws.ws.close()

    run(scenario())


def test_wstoken_answers_the_apis_401s(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    emu.revoke_all()
    for headers in ({}, {"Authorization": "Bearer garbage"}, bearer(login["access_token"])):
        api = http.get(EXT, headers=headers)
        ws = http.post("/restapi/oauth/wstoken", headers=headers)
        assert api.status_code == ws.status_code == 401
        assert ws.json() == api.json()


def test_upgrade_refused_without_a_valid_token(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    body = new_ws_token(http, login["access_token"])
    before = emu.counters()["ws_refused_upgrades"]
    ws_base = body["uri"]
    cases = [(ws_base, "WSG-101"), (f"{ws_base}?access_token=nonsense", "WSG-102")]
    for url, code in cases:
        response = httpx.get(url.replace("ws://", "http://"), trust_env=False,
                             headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                      "Sec-WebSocket-Version": "13",
                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status_code == 401
        assert response.json()["errorCode"] == code

    async def refused(url: str, **kw: Any) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(url, **kw)
            return info.value.status, {}

    assert run(refused(ws_base))[0] == 401
    assert emu.ws_expire_tokens() >= 1
    response = httpx.get(ws_url(body).replace("ws://", "http://"), trust_env=False,
                         headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                  "Sec-WebSocket-Version": "13",
                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status_code == 401 and response.json()["errorCode"] == "WSG-103"
    assert emu.counters()["ws_refused_upgrades"] == before + 4


def test_subscription_sms_and_emitted_events(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    token = new_ws_token(http, login["access_token"])
    presence = unique_presence()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, (meta, _) = await connect(s, ws_url(token))
            wsc = meta["wsc"]["token"]
            short = presence.removeprefix("/restapi/v1.0")
            meta, info = await ws.request("POST", SUB + "/", {
                "eventFilters": [STORE, INSTANT.removeprefix("/restapi/v1.0"), short],
                "deliveryMode": {"transportType": "WebSocket"}})
            assert meta["type"] == "ClientRequest" and meta["status"] == 200
            assert meta["headers"]["WSG-SubscriptionId"] == info["id"]
            assert info["status"] == "Active" and info["deliveryMode"]["transportType"] == \
                "WebSocket"
            for key in ("creationTime", "expirationTime", "expiresIn", "eventFilters"):
                assert key in info
            sms = await asyncio.to_thread(
                http.post, EXT + "/sms", headers=bearer(login["access_token"]),
                json={"from": {"phoneNumber": "+15550100001"},
                      "to": [{"phoneNumber": "+15550100002"}], "text": "hi"})
            assert sms.status_code == 200
            msg_id = sms.json()["id"]
            first, second = await ws.note(), await ws.note()
            assert [first[0]["wsc"]["sequence"], second[0]["wsc"]["sequence"]] == [2, 3]
            assert first[0]["wsc"]["token"] == wsc
            events = {first[1]["event"], second[1]["event"]}
            base = "/restapi/v1.0/account/37439510/extension/100001/message-store"
            assert events == {base, base + "/instant?type=SMS"}
            for note in (first, second):
                meta, payload = note
                assert meta["type"] == "ServerNotification" and meta["status"] == 200
                assert meta["messageId"] == payload["uuid"] and meta["headers"]["RCRequestId"]
                assert payload["subscriptionId"] == info["id"]
                assert payload["ownerId"] == "100001" and payload["timestamp"]
            store = first if first[1]["event"] == base else second
            assert store[1]["body"]["changes"][0]["newMessageIds"] == [int(msg_id)]
            n = await asyncio.to_thread(emu.ws_emit, presence, {"presenceStatus": "Busy"})
            assert n == 1
            third = await ws.note()
            assert third[0]["wsc"]["sequence"] == 4
            assert third[1]["body"] == {"presenceStatus": "Busy"}
            assert third[1]["event"].startswith(
                "/restapi/v1.0/account/37439510/extension/100001/presence?tag=")
            other = await asyncio.to_thread(emu.ws_emit, presence, {}, "100002")
            assert other == 0
            await ws.no_frame()
            await ws.ws.close()

    run(scenario())


def test_heartbeat_malformed_frames_and_rest_over_ws(emu: Emulator, http: httpx.Client
                                                     ) -> None:
    login = jwt_login(http)
    token = new_ws_token(http, login["access_token"])
    over_http = http.get(EXT, headers=bearer(login["access_token"]))

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, ws_url(token))
            await ws.ws.send_str(json.dumps([{"type": "Heartbeat", "messageId": "hb-1"}]))
            assert await ws.frame() == [{"type": "Heartbeat", "messageId": "hb-1"}]
            for bad in ("not json", "{}", "[]", '[{"type": "Nope", "messageId": "m1"}]',
                        '[{"type": "ClientRequest", "messageId": "m2"}]'):
                await ws.ws.send_str(bad)
                meta, body = await ws.frame()
                assert meta["type"] == "Error" and meta["status"] == 400, bad
                assert body["errorCode"] in ("WSG-110", "WSG-111") and body["message"]
            await ws.ws.send_bytes(b"\x00")
            assert (await ws.frame())[1]["errorCode"] == "WSG-110"
            meta, body = await ws.request("GET", "/restapi/v1.0/account/~/extension/~")
            assert meta["status"] == 200 and body == over_http.json()
            assert meta["headers"]["X-Rate-Limit-Group"] == "Light"
            meta, body = await ws.request("GET", "/restapi/v1.0/account/~/extension/~/call-log",
                                          query={"perPage": 2})
            assert meta["status"] == 200 and body["paging"]["perPage"] == 2
            meta, body = await ws.request("POST", "/restapi/oauth/token", {})
            assert meta["status"] == 400 and body["errorCode"] == "WSG-112"
            meta, body = await ws.request("GET", "/restapi/v1.0/nowhere")
            assert meta["status"] == 404 and body["errorCode"] == "CMN-102"
            meta, body = await ws.request("POST", "/restapi/v1.0/account/~/extension/~/sms",
                                          {"text": "x"})
            assert meta["status"] == 200 and body["type"] == "SMS"
            await ws.ws.close()

    run(scenario())


def test_subscription_lifecycle(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    token = new_ws_token(http, login["access_token"])
    first, second = unique_presence(), unique_presence()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, ws_url(token))
            for bad in ({"eventFilters": []}, {"eventFilters": ["no-slash"]},
                        {"eventFilters": [1]}, {"deliveryMode": {"transportType": "WebSocket"}}):
                body = {"deliveryMode": {"transportType": "WebSocket"}, **bad}
                meta, err = await ws.request("POST", SUB, body)
                assert meta["status"] == 400 and err["errorCode"] == "CMN-101", bad
            old = await ws.subscribe([first])
            new = await ws.subscribe([second])  # replaces the first
            assert new["id"] != old["id"]
            meta, err = await ws.request("GET", f"{SUB}/{old['id']}")
            assert meta["status"] == 404 and err["errorCode"] == "CMN-102"
            assert await asyncio.to_thread(emu.ws_emit, first) == 0
            meta, got = await ws.request("GET", f"{SUB}/{new['id']}")
            assert meta["status"] == 200 and got["eventFilters"] == [second]
            meta, put = await ws.request("PUT", f"{SUB}/{new['id']}", {
                "eventFilters": [first], "deliveryMode": {"transportType": "WebSocket"}})
            assert meta["status"] == 200 and put["eventFilters"] == [first]
            assert await asyncio.to_thread(emu.ws_emit, first) == 1
            assert (await ws.note())[1]["subscriptionId"] == new["id"]
            meta, _ = await ws.request("DELETE", f"{SUB}/{new['id']}")
            assert meta["status"] == 204
            assert await asyncio.to_thread(emu.ws_emit, first) == 0
            meta, _ = await ws.request("DELETE", f"{SUB}/{new['id']}")
            assert meta["status"] == 404
            await ws.ws.close()

    run(scenario())


@pytest.mark.parametrize("replay", ["missed", "buffer"])
def test_drop_and_recovery_replays_buffered_events(emu: Emulator, http: httpx.Client,
                                                   replay: str) -> None:
    emu.ws_set_policy(ws_replay=replay)
    login = jwt_login(http)
    presence = unique_presence()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, (meta, _) = await connect(s, ws_url(new_ws_token(http, login["access_token"])))
            wsc = meta["wsc"]["token"]
            sub = await ws.subscribe([presence])
            await asyncio.to_thread(emu.ws_emit, presence, {"n": 1})
            seen = await ws.note()
            assert await asyncio.to_thread(emu.ws_drop, "abort") >= 1
            msg = await ws.ws.receive(timeout=TIMEOUT)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            for n in (2, 3):
                assert await asyncio.to_thread(emu.ws_emit, presence, {"n": n}) == 1
            mine = [x for x in await asyncio.to_thread(emu.ws_sessions)
                    if x["subscription"] and x["subscription"]["id"] == sub["id"]]
            assert mine and not mine[0]["connected"] and mine[0]["unsent"] == 2
            url = ws_url(new_ws_token(http, login["access_token"]), wsc)
            ws2, (meta2, details) = await connect(s, url)
            assert details["recoveryState"] == "Successful"
            assert meta2["wsc"]["token"] == wsc
            expected = [1, 2, 3] if replay == "buffer" else [2, 3]
            got = [await ws2.note() for _ in expected]
            assert [g[1]["body"]["n"] for g in got] == expected
            sequences = [g[0]["wsc"]["sequence"] for g in got]
            assert sequences == sorted(sequences)
            if replay == "buffer":
                assert got[0][1]["uuid"] == seen[1]["uuid"]  # the same event again
            await ws2.no_frame()
            assert await asyncio.to_thread(emu.ws_emit, presence, {"n": 4}) == 1
            assert (await ws2.note())[0]["wsc"]["sequence"] == sequences[-1] + 1
            await ws2.ws.close()

    try:
        run(scenario())
    finally:
        emu.ws_set_policy(ws_replay="missed")


def test_close_drop_refused_recovery_and_unknown_wsc(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)
    presence = unique_presence()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, (meta, _) = await connect(s, ws_url(new_ws_token(http, login["access_token"])))
            wsc = meta["wsc"]["token"]
            await ws.subscribe([presence])
            await asyncio.to_thread(emu.ws_drop, "close")
            msg = await ws.ws.receive(timeout=TIMEOUT)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
            await asyncio.to_thread(emu.ws_refuse_recovery, True)
            try:
                url = ws_url(new_ws_token(http, login["access_token"]), wsc)
                ws2, (meta2, details) = await connect(s, url)
            finally:
                await asyncio.to_thread(emu.ws_refuse_recovery, False)
            assert details["recoveryState"] == "Failed"
            assert meta2["wsc"]["token"] != wsc and meta2["wsc"]["sequence"] == 1
            # the new session has no subscription (the old one, still within its recovery
            # window, buffers the event)
            assert await asyncio.to_thread(emu.ws_emit, presence) == 1
            await ws2.no_frame()
            url = ws_url(new_ws_token(http, login["access_token"]), "unknown-wsc")
            ws3, (_, details3) = await connect(s, url)
            assert details3["recoveryState"] == "Failed"
            await ws2.ws.close()
            await ws3.ws.close()

    run(scenario())


def test_single_and_reusable_ws_tokens(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)

    async def twice(token: dict) -> int | None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, ws_url(token))
            await ws.ws.close()
            try:
                ws2, _ = await connect(s, ws_url(token))
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            await ws2.ws.close()
            return None

    assert run(twice(new_ws_token(http, login["access_token"]))) == 401
    emu.ws_set_policy(ws_token_use="reusable")
    try:
        assert run(twice(new_ws_token(http, login["access_token"]))) is None
    finally:
        emu.ws_set_policy(ws_token_use="single")


def test_connection_limit_per_user_and_app(emu: Emulator, http: httpx.Client) -> None:
    emu.ws_set_policy(ws_token_use="reusable")
    login = jwt_login(http, "demo-jwt-credential-2")
    token = new_ws_token(http, login["access_token"])

    async def scenario() -> tuple[int, int]:
        async with aiohttp.ClientSession() as s:
            opened = await asyncio.gather(*(connect(s, ws_url(token)) for _ in range(50)))
            open_now = (await asyncio.to_thread(emu.counters))["ws_open_by_pair"]
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(ws_url(token))
            for ws, _ in opened:
                await ws.ws.close()
            return info.value.status, open_now["demo-client-id/100002"]

    try:
        status, open_now = run(scenario())
    finally:
        emu.ws_set_policy(ws_token_use="single")
    assert status == 429 and open_now == 50
    counters = emu.counters()
    assert counters["ws_open_max"]["demo-client-id/100002"] == 50
    assert counters["ws_refused_by_code"]["WSG-105"] >= 1


def test_revoke_all_closes_connections_and_the_session_recovers(emu: Emulator,
                                                                http: httpx.Client) -> None:
    login = jwt_login(http)
    presence = unique_presence()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, (meta, _) = await connect(s, ws_url(new_ws_token(http, login["access_token"])))
            wsc = meta["wsc"]["token"]
            await ws.subscribe([presence])
            await asyncio.to_thread(emu.revoke_all)
            msg = await ws.ws.receive(timeout=TIMEOUT)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
            assert await asyncio.to_thread(emu.ws_emit, presence, {"n": 1}) == 1  # buffered
            again = jwt_login(http)
            url = ws_url(new_ws_token(http, again["access_token"]), wsc)
            ws2, (_, details) = await connect(s, url)
            assert details["recoveryState"] == "Successful"
            assert (await ws2.note())[1]["body"] == {"n": 1}
            await ws2.ws.close()

    run(scenario())


def test_idle_absolute_and_pong_timeouts(emu: Emulator, http: httpx.Client) -> None:
    login = jwt_login(http)

    async def timed_out(code: str) -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, ws_url(new_ws_token(http, login["access_token"])))
            meta, body = await ws.frame()
            assert meta["type"] == "Error" and body == {
                "errorCode": code, "message": {"WSG-902": "Idle timeout expired",
                                               "WSG-903": "Absolute timeout expired"}[code]}
            msg = await ws.ws.receive(timeout=TIMEOUT)
            assert msg.type == aiohttp.WSMsgType.CLOSE

    async def no_pong() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(ws_url(new_ws_token(http, login["access_token"])),
                                    autoping=False)
            await asyncio.sleep(2.5)  # never answers the server's ping
            kinds = []
            while True:
                msg = await ws.receive(timeout=TIMEOUT)
                kinds.append(msg.type)
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR,
                                aiohttp.WSMsgType.CLOSE):
                    break
            assert aiohttp.WSMsgType.PING in kinds

    try:
        emu.ws_set_policy(ws_idle_timeout=0.5)
        run(timed_out("WSG-902"))
        emu.ws_set_policy(ws_idle_timeout=1800, ws_absolute_timeout=0.5)
        run(timed_out("WSG-903"))
        emu.ws_set_policy(ws_absolute_timeout=86400, ws_ping_interval=0.5, ws_pong_timeout=0.5)
        run(no_pong())
    finally:
        emu.ws_set_policy(ws_idle_timeout=1800, ws_absolute_timeout=86400, ws_ping_interval=30,
                       ws_pong_timeout=10)


def test_counters(emu: Emulator, http: httpx.Client) -> None:
    emu.reset_counters()
    login = jwt_login(http)
    token = new_ws_token(http, login["access_token"])

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, ws_url(token))
            await ws.subscribe([unique_presence()])
            await ws.request("GET", EXT)
            await ws.ws.close()

    run(scenario())
    c = emu.counters()
    assert c["ws_token_calls"] == 1 and c["ws_connects"] == 1
    assert c["ws_client_requests"] == 2 and c["ws_subscription_requests"] == 1
    assert c["ws_open_max"] == {"demo-client-id/100001": 1}
    for key in ("ws_open", "ws_recoveries_successful", "ws_recoveries_failed",
                "ws_notifications_sent", "ws_refused_upgrades"):
        assert key in c


def test_wstoken_counts_in_the_auth_group() -> None:
    emu = start_emulator("--auth-rate", "3", "--session-cap", "1000")
    try:
        with client(emu) as http:
            login = jwt_login(http)  # 1 of 3
            first = wstoken(http, login["access_token"])
            assert first.status_code == 200
            assert first.headers["X-Rate-Limit-Group"] == "Auth"
            assert first.headers["X-Rate-Limit-Remaining"] == "1"
            assert wstoken(http, login["access_token"]).status_code == 200  # 3 of 3
            refused = wstoken(http, login["access_token"])
            assert refused.status_code == 429
            assert refused.json()["errorCode"] == "CMN-301" and "Retry-After" in refused.headers
            again = http.post("/restapi/oauth/token", auth=("demo-client-id", "demo-client-secret"),
                              data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                    "assertion": "demo-jwt-credential"})
            assert again.status_code == 429  # the same budget
            other = http.post("/restapi/oauth/token", auth=("demo-client-id", "demo-client-secret"),
                              data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                    "assertion": "demo-jwt-credential-2"})
            assert other.status_code == 200  # another user: another key
    finally:
        emu.stop()
