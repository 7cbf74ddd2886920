"""Per-app scopes and rotating client keys through a real proxy (issue 19, items 3 and 4): a
scoped client gets what its allow list names and 403 ``TPX-SCOPE-DENIED`` for the rest — case,
encodings and dot-segments included, sent byte by byte — and nothing denied reaches the
platform, over HTTP or over the socket; a client with two keys (rotation) is served with either,
one configured only by its SHA-256 with its key."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import aiohttp
import httpx

from proxy_addon.config.model import key_digest
from tests.events.apps import connect, request_frame, subscribe_frame

EXT = "/restapi/v1.0/account/~/extension/~"
SCOPED = "scoped-app-key-0123456789"
OLD, NEW = "old-app-key-0123456789", "new-app-key-0123456789"
BY_DIGEST = "digest-app-key-0123456789"
SMS = {"from": {"phoneNumber": "+15550100001"}, "to": [{"phoneNumber": "+15550109999"}],
       "text": "scoped"}


def raw(url: str, request: str) -> tuple[int, dict]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.strip().startswith(b"{") else {}


def post(url: str, target: str, key: str) -> tuple[int, dict]:
    body = json.dumps(SMS)
    return raw(url, f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n{body}")


async def over_the_socket(proxy_url: str) -> list:
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30,
                                 headers={"Authorization": f"Bearer {SCOPED}"}) as http, \
            aiohttp.ClientSession() as session:
        token = (await http.post("/restapi/oauth/wstoken")).json()
        ws, _ = await connect(session, token)
        await ws.send_str(request_frame("r1", "GET", EXT))
        await ws.send_str(request_frame("r2", "GET", EXT + "/call-log"))
        await ws.send_str(subscribe_frame("s1", [EXT + "/presence"]))
        answers = {}
        while len(answers) < 3:
            frame = json.loads((await ws.receive(timeout=30)).data)
            answers[frame[0]["messageId"]] = frame
        await ws.close()
        return [answers["r1"], answers["r2"], answers["s1"]]


def test_scopes_and_rotating_keys(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, clients=[
        {"name": "scoped", "account": "main", "key": SCOPED,
         "allow": [f"GET {EXT}", f"POST {EXT}/sms", "POST /restapi/oauth/wstoken"]},
        {"name": "rotating", "account": "main", "keys": [OLD, NEW]},
        {"name": "by-digest", "account": "main", "key_sha256": key_digest(BY_DIGEST)}])
    url = proxy.url
    for key in (OLD, NEW, BY_DIGEST, SCOPED):
        answer = httpx.get(url + EXT, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, (key, answer.text)
    answer = httpx.get(url + EXT, headers={"Authorization": f"Bearer {key_digest(BY_DIGEST)}"},
                       timeout=30)
    assert answer.status_code == 401  # the digest is not a key
    assert post(url, EXT + "/sms", SCOPED)[0] == 200
    before = emulator.counters()["api_requests"]
    denied = [
        post(url, EXT + "/fax", SCOPED),
        post(url, EXT.upper() + "/FAX", SCOPED),
        post(url, EXT + "/%66ax", SCOPED),  # "fax", encoded
        post(url, EXT + "//fax/", SCOPED),
        raw(url, f"GET {EXT}/call-log HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SCOPED}\r\n"
                 "Connection: close\r\n\r\n"),
        raw(url, f"DELETE {EXT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SCOPED}\r\n"
                 "Connection: close\r\n\r\n"),
    ]
    for status, body in denied:
        assert (status, body.get("errorCode")) == (403, "TPX-SCOPE-DENIED"), (status, body)
    status, body = post(url, EXT + "/sms/../fax", SCOPED)  # refused before scopes: the guard
    assert (status, body.get("errorCode")) == (400, "TPX-BAD-REQUEST-TARGET")
    rest, call_log, subscription = asyncio.run(over_the_socket(url))
    assert rest[0]["status"] == 200
    assert (call_log[0]["status"], call_log[1]["errorCode"]) == (403, "TPX-SCOPE-DENIED")
    assert (subscription[0]["status"], subscription[1]["errorCode"]) == (403,
                                                                         "TPX-SCOPE-DENIED")
    counters = emulator.counters()
    assert counters["api_requests"] == before  # nothing denied went out over HTTP ...
    assert counters["ws_client_requests"] == 1  # ... nor over the socket: the allowed GET only
    assert counters["ws_subscription_requests"] == 0
    logs = proxy.logs()
    for key in (SCOPED, OLD, NEW, BY_DIGEST):
        assert key not in logs
