"""The pure parts of real-time events: frames as apps and the platform send them, event filters
and their matching, the proxy's ws tokens."""

from __future__ import annotations

import json
import time

import pytest

from proxy_addon.events import frames
from proxy_addon.events.filters import FilterError, parse_filter, parse_filters
from proxy_addon.events.ws_tokens import SocketTokens, WsTokenError, WsTokens, signing_key

# code-samples/websockets/websocket-notification.json (ringcentral-api-docs)
SAMPLE_EVENT = "/restapi/v1.0/account/233676004/extension/233676004/message-store"


@pytest.mark.parametrize(("text", "problem"), [
    ("nope", "not JSON"), ("[]", "a frame is a JSON array"), ('{"type": 1}', "a frame is"),
    ("[1, 2, 3]", "a frame is"), ("[1]", "meta"), ('[{"type": "Boom", "messageId": "a"}]',
                                                    "meta.type must be one of"),
    ('[{"type": "Heartbeat"}]', "meta.messageId"),
    ('[{"type": "Heartbeat", "messageId": ""}]', "meta.messageId"),
    ('[{"type": "ClientRequest", "messageId": "a", "method": "GET"}]', "meta.path"),
    ('[{"type": "ClientRequest", "messageId": "a", "method": "GET", "path": "x"}]',
     "meta.path"),
    ('[{"type": "ClientRequest", "messageId": "a", "method": "GET", "path": "/a b"}]',
     "meta.path"),
    ('[{"type": "ClientRequest", "messageId": "a", "method": "TRACE", "path": "/a"}]',
     "meta.method"),
    ('[{"type": "ClientRequest", "messageId": "a", "method": "GET", "path": "/a", '
     '"headers": []}]', "meta.headers"),
    ('[{"type": "ServerNotification", "messageId": "a"}, {}]', "meta.type must be one of"),
])
def test_app_frames_are_checked(text: str, problem: str) -> None:
    with pytest.raises(frames.FrameError, match=problem):
        frames.parse(text, from_app=True)


def test_an_app_frame_names_its_message_id_in_the_error() -> None:
    with pytest.raises(frames.FrameError) as caught:
        frames.parse('[{"type": "ClientRequest", "messageId": "m-7", "method": "X", '
                     '"path": "/a"}]', from_app=True)
    assert caught.value.message_id == "m-7"
    error = json.loads(frames.error_frame(400, "TPX-WS-BAD-FRAME", "bad", "m-7"))
    assert error[0] == {**error[0], "type": "Error", "messageId": "m-7", "status": 400}
    assert error[1]["errorCode"] == "TPX-WS-BAD-FRAME"


def test_platform_frames_pass_and_keep_their_shape() -> None:
    text = json.dumps([{"type": "ServerNotification", "messageId": "1", "status": 200},
                       {"uuid": "1", "event": SAMPLE_EVENT}])
    frame = frames.parse(text, from_app=False)
    assert frame.type == "ServerNotification" and frame.has_body
    assert json.loads(frame.text()) == json.loads(text)
    heartbeat = frames.parse(frames.heartbeat_frame("h"), from_app=True)
    assert heartbeat.type == "Heartbeat" and not heartbeat.has_body


@pytest.mark.parametrize(("wanted", "event", "matches"), [
    ("/restapi/v1.0/account/~/extension/~/message-store", SAMPLE_EVENT, True),
    ("/account/~/extension/~/message-store", SAMPLE_EVENT, True),  # prefix optional
    ("/restapi/v1.0/account/~/extension/~/message-store/", SAMPLE_EVENT, True),
    ("/restapi/v1.0/account/~/extension/233676004/message-store", SAMPLE_EVENT, True),
    ("/restapi/v1.0/account/~/extension/111/message-store", SAMPLE_EVENT, False),
    ("/restapi/v1.0/account/~/extension/~/presence", SAMPLE_EVENT, False),
    ("/restapi/v1.0/account/~/extension/~/message-store/instant?type=SMS",
     SAMPLE_EVENT + "/instant?type=SMS", True),
    ("/restapi/v1.0/account/~/extension/~/message-store/instant?type=SMS",
     SAMPLE_EVENT + "/instant?type=Fax", False),
    ("/restapi/v1.0/account/~/extension/~/presence?detailedTelephonyState=true&sipData=true",
     "/restapi/v1.0/account/1/extension/2/presence?sipData=true&detailedTelephonyState=true",
     True),
    ("/restapi/v1.0/account/~/extension/~/presence?detailedTelephonyState=true",
     "/restapi/v1.0/account/1/extension/2/presence", False),
    ("/restapi/v1.0/account/~/telephony/sessions", "/restapi/v1.0/account/1/telephony/sessions",
     True),
    ("/restapi/v1.0/~/extension/~/presence", "/restapi/v1.0/1/extension/2/presence", False),
])
def test_filters_match_events_like_the_platform_fills_them_in(wanted: str, event: str,
                                                             matches: bool) -> None:
    assert parse_filter(wanted).matches(parse_filter(event)) is matches


@pytest.mark.parametrize("value", [None, [], "x", ["presence"], [1], ["/a b"], ["/"],
                                   ["/" + "a" * 1100], ["/ok"] * 0])
def test_bad_filter_lists_are_refused(value: object) -> None:
    with pytest.raises(FilterError):
        parse_filters(value, limit=10)


def test_filter_lists_are_deduplicated_and_bounded() -> None:
    same = parse_filters(["/restapi/v1.0/account/~/extension/~/presence",
                          "/account/~/extension/~/presence/"], limit=10)
    assert len(same) == 1
    with pytest.raises(FilterError, match="at most 2"):
        parse_filters(["/a", "/b", "/c"], limit=2)


def test_ws_tokens_verify_expire_and_refuse_forgeries() -> None:
    tokens = WsTokens(signing_key("store-key-material"), ttl=600)
    token, grant = tokens.issue("app", "main")
    assert tokens.verify(token) == grant and grant.client == "app" and grant.account == "main"
    other = WsTokens(signing_key("another-key"), ttl=600)
    with pytest.raises(WsTokenError) as caught:
        other.verify(token)  # signed with another deployment's key
    assert caught.value.code == "TPX-WS-TOKEN-UNKNOWN"
    head, payload, signature = token.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for forged in (f"{head}.{forged_payload}.{signature}", "garbage", token + "x", "a.b.c"):
        with pytest.raises(WsTokenError):
            tokens.verify(forged)
    short = WsTokens(signing_key("store-key-material"), ttl=0.05)
    token, _ = short.issue("app", "main")
    time.sleep(0.1)
    with pytest.raises(WsTokenError) as caught:
        short.verify(token)
    assert caught.value.code == "TPX-WS-TOKEN-EXPIRED"
    # two processes with the same store key accept each other's tokens (workers, replicas)
    assert WsTokens(signing_key("store-key-material"), 600).verify(
        WsTokens(signing_key("store-key-material"), 600).issue("a", "b")[0]).client == "a"


def test_a_ws_token_opens_one_socket_at_a_time() -> None:
    tokens = WsTokens(signing_key(None), ttl=600)
    _, grant = tokens.issue("app", "main")
    held = SocketTokens()
    held.claim(grant)
    with pytest.raises(WsTokenError) as caught:
        held.claim(grant)
    assert caught.value.code == "TPX-WS-TOKEN-IN-USE"
    held.release(grant)
    held.claim(grant)  # a reconnect with the same still-valid token (the SDKs' reuse)
