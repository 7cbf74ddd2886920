"""The guard at the request's headers, through raw sockets (a client library would normalise
these requests away): refusals leave before the body is read (no buffering of a flood, no
``100 Continue``), login forms are small, the process-wide replay buffer is capped, CONNECT and
the emulator's admin routes are never served."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from tests.support.proxy import APP_KEY

EXT = "/restapi/v1.0/account/~/extension/~"
ECHO = "/restapi/v1.0/echo"


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _read_answer(sock: socket.socket, limit: int = 1 << 20) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer (Content-Length bodies)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
        assert len(data) < limit
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:")))


def test_a_refused_flood_is_answered_before_its_body(emulator_factory, proxy_factory) -> None:
    """300 MB with a bogus key: the 401 comes back at once and the body is never buffered
    (before the fix the proxy's peak RSS grew by about twice the body)."""
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, bad_key_limit=0)
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200  # warm
    before = _peak_rss_kb(proxy.proc.pid)
    size = 300 * 1024 * 1024
    sent = [0]
    with socket.create_connection(_address(proxy.url), timeout=30) as sock:
        sock.sendall(f"POST {ECHO} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-key-"
                     f"0123456789\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())

        def flood() -> None:
            block = b"\0" * (1024 * 1024)
            try:
                for _ in range(size // len(block)):  # bounded: the declared size
                    sock.sendall(block)
                    sent[0] += len(block)
            except OSError:
                pass  # the proxy closed: expected once it answered

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        status, headers, body = _read_answer(sock)
        sender.join(60)
    grown_mb = (_peak_rss_kb(proxy.proc.pid) - before) / 1024
    print(f"figures flood: 401 after {sent[0] / 2**20:.0f} MiB sent, peak RSS +{grown_mb:.1f} MiB")
    assert grown_mb < 50, grown_mb
    assert status == 401 and json.loads(body)["errorCode"] == "TPX-CLIENT-UNKNOWN"
    assert headers.get("connection") == "close"
    with proxy.http() as client:
        assert client.get(EXT).status_code == 200  # the proxy serves on


def test_no_100_continue_for_a_refused_request(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, bad_key_limit=0)
    head = (f"POST {ECHO} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            "Expect: 100-continue\r\n")
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        sock.sendall((head + "Authorization: Bearer not-a-key-0123456789\r\n\r\n").encode())
        status, _, body = _read_answer(sock)
    assert status == 401, body  # not 100: the client need not send a byte of its body
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:  # valid key
        sock.sendall((head + f"Authorization: Bearer {APP_KEY}\r\n\r\n").encode())
        status, _, _ = _read_answer(sock)
        assert status == 100
        sock.sendall(b"x" * 1000000)
        status, _, body = _read_answer(sock)
    assert status == 200 and json.loads(body)["bodyLength"] == 1000000


def test_login_forms_are_small(emulator_factory, proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    before = emulator.counters()["token_calls"]
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        sock.sendall(b"POST /restapi/oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/x-www-form-urlencoded\r\nContent-Length: 10000000\r\n\r\n"
                     b"grant_type=password&username=")
        status, _, body = _read_answer(sock)
    assert status == 413 and json.loads(body)["errorCode"] == "TPX-BODY-REFUSED"
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        sock.sendall(b"POST /restapi/oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\ngran\r\n")
        status, _, body = _read_answer(sock)
    assert status == 411 and json.loads(body)["errorCode"] == "TPX-BODY-REFUSED"
    assert emulator.counters()["token_calls"] == before  # nothing reached the platform


def test_the_replay_buffer_is_capped_for_the_whole_process(emulator_factory,
                                                           proxy_factory) -> None:
    """Beyond replay_buffer_total a body streams (not replayable) instead of being held."""
    emulator = emulator_factory("--auth-rate", "0")
    capped = proxy_factory(emulator.url, replay_buffer_total=1024 * 1024)
    roomy = proxy_factory(emulator.url)
    body = b"y" * (2 * 1024 * 1024)
    with capped.http() as small, roomy.http() as large:
        assert small.get(EXT).status_code == 200 and large.get(EXT).status_code == 200
        emulator.revoke_all()
        streamed = small.post(ECHO, content=body)  # over the cap: streamed, not replayable
        assert streamed.status_code == 401, streamed.text[:200]
        assert streamed.json()["errors"][0]["errorCode"] == "OAU-213"
        replayed = large.post(ECHO, content=body)  # within the default cap: replayed
        assert replayed.status_code == 200 and replayed.json()["bodyLength"] == len(body)
        assert small.post(ECHO, content=b"z" * 1000).status_code == 200  # small ones buffer


def test_connect_and_the_emulator_admin_routes_are_never_served(emulator_factory,
                                                                proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    before = emulator.counters()
    for target in ("/_emulator/revoke-all", "/_EMULATOR/counters", "//_emulator/policy"):
        with socket.create_connection(_address(proxy.url), timeout=10) as sock:
            sock.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         f"{APP_KEY}\r\nContent-Length: 0\r\n\r\n".encode())
            status, _, body = _read_answer(sock)
        assert status == 404 and json.loads(body)["errorCode"] == "TPX-NOT-SERVED", target
    with socket.create_connection(_address(proxy.url), timeout=10) as sock:
        sock.sendall(f"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n"
                     f"Authorization: Bearer {APP_KEY}\r\n\r\n".encode())
        status, _, _ = _read_answer(sock)
    assert status in (400, 405)
    assert emulator.counters()["revocations"] == before["revocations"]
    assert emulator.counters()["api_requests"] == before["api_requests"]
