"""Replays as the real world meets them: an app that gave up is not replayed (a retried SMS is
never sent twice), a replay sends the very request target the app sent, and a replayed answer
too large to hold is never buffered whole."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.emulator import recording_sha256
from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"


def _metric(proxy, name: str, **labels: str) -> float:
    text = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


def test_a_request_whose_app_hung_up_is_not_replayed(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200  # a token is held
    emulator.set_policy(token_delay=3.0)  # the renewal will outlast the app's patience
    emulator.revoke_all()
    before = emulator.counters()["api_requests"]
    with httpx.Client(base_url=proxy.url, headers={"Authorization": f"Bearer {APP_KEY}"},
                      timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(EXT + "/sms", json={"to": [{"phoneNumber": "+15550109999"}],
                                           "from": {"phoneNumber": "+15550100001"},
                                           "text": "sent once"})
    deadline = time.monotonic() + 20
    abandoned = -1.0
    while time.monotonic() < deadline:  # bounded: the renewal takes 3 s
        abandoned = _metric(proxy, "tokenproxy_replays_total", account="main",
                            outcome="abandoned")
        if abandoned >= 1:
            break
        time.sleep(0.2)
    assert abandoned == 1
    assert emulator.counters()["api_requests"] - before == 1  # the first attempt, no replay
    emulator.set_policy(token_delay=0.0)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200


def _raw_get(url: str, target: str) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_KEY}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return json.loads(body)


def test_a_replay_sends_the_target_byte_identical(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    path = "/restapi/v1.0/echo/a%7Cb;c=d/%7Ex/%41"
    query = "q=%2F&r=a+b&s=%7E&t=%20&u=%41&v"
    first = _raw_get(proxy.url, f"{path}?{query}")
    emulator.revoke_all()
    replayed = _raw_get(proxy.url, f"{path}?{query}")
    assert emulator.counters()["api_401_by_code"].get("OAU-213") == 1  # it was replayed
    assert (first["path"], first["query"]) == (path, query)
    assert (replayed["path"], replayed["query"]) == (path, query)


def test_a_replayed_large_download_is_never_buffered(emulator_factory, proxy_factory) -> None:
    """A replay's answer is held whole by mitmproxy; beyond stream_threshold the app is told
    to repeat the request (503, Retry-After) and the repeat streams with the fresh token."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    size, rec_id = 80 * 1024 * 1024, "700000001"
    content = f"/restapi/v1.0/account/~/recording/{rec_id}/content?size={size}"

    def rss_kb() -> int:
        status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM:")))

    with proxy.http() as client:
        assert client.get(EXT).status_code == 200
        before = rss_kb()
        emulator.revoke_all()
        refused = client.get(content)
        assert refused.status_code == 503, refused.status_code
        assert refused.json()["errorCode"] == "TPX-REPLAY-TOO-LARGE"
        assert refused.headers["retry-after"] == "1"
        digest = hashlib.sha256()
        with client.stream("GET", content) as again:  # the token is fresh: it streams
            assert again.status_code == 200
            for chunk in again.iter_bytes(1024 * 1024):
                digest.update(chunk)
        grown_mb = (rss_kb() - before) / 1024
    print(f"figures replay-too-large: peak RSS +{grown_mb:.1f} MiB for an {size >> 20} MiB "
          "download refused at replay, then streamed")
    assert digest.hexdigest() == recording_sha256(rec_id, size)
    assert grown_mb < 40, grown_mb
