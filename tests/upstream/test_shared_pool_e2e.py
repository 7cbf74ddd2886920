"""The shared upstream pool (issue 16, item 1), end to end: a real tokenproxy process in front of
a scripted loopback upstream (:mod:`tests.support.scripted_upstream`), apps as raw sockets that
open one connection per request (what PHP-FPM, Ruby's Net::HTTP or curl in a cron job do).

No timings are asserted: what is counted is connections and bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import APP_KEY, Proxy, start_proxy
from tests.support.scripted_upstream import Answer, ScriptedUpstream, Seen, generated_body

EXT = "/restapi/v1.0/account/~/extension/~"


def request(port: int, method: str = "GET", target: str = EXT, body: bytes = b"",
            extra: str = "", keep_reading: bool = True) -> bytes:
    """One app connection, one request (``Connection: close``), the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {APP_KEY}\r\nConnection: close\r\n{extra}")
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while keep_reading and len(answer) < 64 * 1024 * 1024:  # bounded
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def ok(_: Seen) -> Answer:
    return Answer(headers=[("Content-Type", "application/json")])


@pytest.fixture
def proxy_for(tmp_path: Path):
    started: list[Proxy] = []

    def start(upstream: ScriptedUpstream, **options: object) -> Proxy:
        proxy = start_proxy(tmp_path, upstream.url, **options)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def test_twenty_app_connections_share_one_upstream_connection(proxy_for) -> None:
    with ScriptedUpstream(ok) as upstream:
        proxy = proxy_for(upstream)
        answers = [request(port_of(proxy)) for _ in range(20)]  # bounded
        assert [status_of(a) for a in answers] == [200] * 20
        api = upstream.api()
        assert len(api) == 20
        # mitmproxy alone: 20 upstream connections, one per app connection
        assert len(upstream.api_connections) <= 2, upstream.api_connections
        # the app's credential never left; the account's token did
        assert all(s.headers["authorization"] == "Bearer upstream-access-1" for s in api)
        assert proxy.admin_url is not None
        scrape = httpx.get(proxy.admin_url.rstrip("/") + "/metrics", timeout=10).text
        opened = next(float(line.split()[-1]) for line in scrape.splitlines()
                      if line.startswith("tokenproxy_upstream_connections_opened_total"))
        assert opened == len(upstream.api_connections)
        assert "tokenproxy_upstream_pool_in_use 0.0" in scrape


def test_the_request_leaves_as_the_app_sent_it(proxy_for) -> None:
    with ScriptedUpstream(ok) as upstream:
        proxy = proxy_for(upstream)
        target = EXT + "/call-log?dateFrom=2026-01-01T00:00:00.000Z&x=%2F"
        answer = request(port_of(proxy), "POST", target, b'{"a": 1}',
                         extra="Content-Type: application/json\r\nX-Custom: Yes\r\n"
                               "Accept-Encoding: gzip\r\n")
        assert status_of(answer) == 200, answer[:300]
        seen = upstream.api()[-1]
        assert seen.method == "POST" and seen.target == target and seen.body == b'{"a": 1}'
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["x-custom"] == "Yes"
        assert seen.headers["accept-encoding"] == "gzip"
        assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"
        assert "user-agent" not in seen.headers  # nothing of the pool client's own


def test_a_stale_connection_retries_a_get_once_and_never_a_post(proxy_for) -> None:
    """The upstream drops every request that arrives as the 2nd on a connection (as a server
    that closed it while the request was on its way): a GET goes out once more on a new
    connection; a POST is not sent again: the app gets 502."""
    def script(seen: Seen) -> Answer:
        return Answer(drop=True) if seen.index >= 1 else ok(seen)

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        port = port_of(proxy)
        assert status_of(request(port)) == 200  # opens connection A
        assert status_of(request(port)) == 200  # A is dropped, retried on B
        gets = [s for s in upstream.api() if s.method == "GET"]
        assert len(gets) == 3 and gets[1].connection != gets[2].connection
        answer = request(port, "POST", EXT, b"{}")  # B is dropped: no retry
        assert status_of(answer) == 502, answer[:300]
        assert b"TPX-UPSTREAM-UNREACHABLE" in answer
        assert len([s for s in upstream.api() if s.method == "POST"]) == 1


def test_a_connection_the_upstream_closed_while_idle_is_not_used(proxy_for) -> None:
    def script(seen: Seen) -> Answer:
        return Answer(close_after=True, headers=[("Content-Type", "application/json")])

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        port = port_of(proxy)
        for _ in range(3):  # bounded
            assert status_of(request(port, "POST", EXT, b"{}")) == 200
            time.sleep(0.3)  # the upstream has closed the connection meanwhile
        posts = [s for s in upstream.api() if s.method == "POST"]
        assert len(posts) == 3 and len({s.connection for s in posts}) == 3


def test_a_full_pool_refuses_with_503_instead_of_queueing(proxy_for) -> None:
    import threading

    def script(seen: Seen) -> Answer:
        return Answer(hold=seen.target.endswith("/slow"))

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream, upstream_pool_size=1, upstream_pool_wait=0.3)
        port = port_of(proxy)
        held: list[bytes] = []
        slow = threading.Thread(target=lambda: held.append(request(port, target=EXT + "/slow")))
        slow.start()
        for _ in range(100):  # bounded: until the slow request holds the only connection
            if upstream.api():
                break
            time.sleep(0.05)
        answer = request(port)
        upstream.release.set()
        slow.join(30)
        assert status_of(answer) == 503, answer[:300]
        assert b"TPX-UPSTREAM-BUSY" in answer and b"Retry-After: 1" in answer
        assert status_of(held[0]) == 200
        assert status_of(request(port)) == 200  # the connection is free again


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_a_large_answer_streams_through_the_pool(proxy_for, sized: bool) -> None:
    size = 8 * 1024 * 1024  # well past stream_threshold (1 MiB): streamed, many chunks

    def script(seen: Seen) -> Answer:
        return Answer(generated=size, sized=sized,
                      headers=[("Content-Type", "application/octet-stream")])

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        answer = request(port_of(proxy), target="/restapi/v1.0/recording/1/content")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        if not sized:
            assert b"transfer-encoding: chunked" in head.lower()
            body = dechunk(body)
        assert len(body) == size
        assert hashlib.sha256(body).digest() == hashlib.sha256(generated_body(size)).digest()
        assert status_of(request(port_of(proxy))) == 200  # the pooled connection is reusable
        assert len(upstream.api_connections) == 1


def dechunk(body: bytes) -> bytes:
    out, rest = bytearray(), body
    for _ in range(1_000_000):  # bounded
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2:]
    raise AssertionError("no last chunk")


def test_an_upstream_reset_mid_body_cuts_the_app_connection(proxy_for) -> None:
    size = 8 * 1024 * 1024

    def script(seen: Seen) -> Answer:
        if seen.target.endswith("/content"):
            return Answer(generated=size, cut_after=2 * 1024 * 1024,
                          headers=[("Content-Type", "application/octet-stream")])
        return ok(seen)

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        answer = request(port_of(proxy), target="/restapi/v1.0/recording/1/content")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"content-length: {size}".encode() \
            in head.lower()
        assert len(body) < size  # cut: never ended as if whole
        assert status_of(request(port_of(proxy))) == 200  # the proxy serves on
        assert "Traceback" not in proxy.log_path.read_text(errors="replace")


def test_an_app_hanging_up_mid_stream_frees_the_pooled_connection(proxy_for) -> None:
    size = 64 * 1024 * 1024

    def script(seen: Seen) -> Answer:
        if seen.target.endswith("/content"):
            return Answer(generated=size, headers=[("Content-Type", "audio/mpeg")])
        return ok(seen)

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream, upstream_pool_size=1, upstream_pool_wait=5)
        port = port_of(proxy)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET /restapi/v1.0/recording/1/content HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {APP_KEY}\r\n\r\n".encode())
            received = 0
            while received < 1024 * 1024:  # bounded: read 1 MiB, then hang up
                chunk = sock.recv(65536)
                assert chunk
                received += len(chunk)
        # the only pooled connection comes free (closed: its body was not read to the end)
        answer = request(port)
        assert status_of(answer) == 200, answer[:300]
        log = proxy.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "KeyError" not in log


def test_compressed_answers_pass_byte_identical(proxy_for) -> None:
    plain = b'{"records": [' + b",".join(b'{"id": %d, "text": "hello"}' % i
                                         for i in range(2000)) + b"]}"
    packed = gzip.compress(plain, mtime=0)
    binary = gzip.compress(bytes(range(256)) * 1000, mtime=0)

    def script(seen: Seen) -> Answer:
        if seen.target.endswith("/binary"):
            return Answer(body=binary, headers=[("Content-Type", "application/octet-stream"),
                                                ("Content-Encoding", "gzip")])
        return Answer(body=packed, headers=[("Content-Type", "application/json"),
                                            ("Content-Encoding", "gzip")])

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        for target, expected in ((EXT, packed), (EXT + "/binary", binary)):
            answer = request(port_of(proxy), target=target, extra="Accept-Encoding: gzip\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"content-encoding: gzip" in head.lower()
            assert body == expected  # not decoded and encoded again


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_bodiless_answers_keep_the_app_connection_usable(proxy_for, method: str,
                                                          status: int) -> None:
    def script(seen: Seen) -> Answer:
        return Answer(status=status, body=b'{"x": 1}' if status == 200 else b"",
                      headers=[("Content-Type", "application/json"), ("ETag", '"v1"')])

    with ScriptedUpstream(script) as upstream:
        proxy = proxy_for(upstream)
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=30) as sock:
            one = (f"{method} {EXT} HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {APP_KEY}\r\n\r\n").encode()
            sock.sendall(one + one.replace(method.encode(), b"GET", 1)
                         .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            answer = b""
            for _ in range(1000):  # bounded
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        answers = [b"HTTP/1.1 " + part for part in answer.split(b"HTTP/1.1 ")[1:]]
        assert len(answers) == 2, answer  # the connection carried the second request
        assert all(a.startswith(f"HTTP/1.1 {status}".encode()) for a in answers), answer
        head, _, body = answers[0].partition(b"\r\n\r\n")
        assert body == b""  # no body, whatever the headers say
        if method == "HEAD":
            assert b"content-length: 8" in head.lower()  # what a GET would carry
        assert b'etag: "v1"' in head.lower()


def test_an_empty_post_and_odd_targets_leave_as_sent(proxy_for) -> None:
    with ScriptedUpstream(ok) as upstream:
        proxy = proxy_for(upstream)
        port = port_of(proxy)
        assert status_of(request(port, "POST", EXT + "/empty", b"")) == 200
        for target in (EXT + "?a=1&a=2&b=%20x", EXT + "/%7Euser", EXT + "?q=caf%C3%A9"):
            assert status_of(request(port, target=target)) == 200
        seen = upstream.api()
        assert seen[0].method == "POST" and seen[0].headers.get("content-length") == "0"
        assert [s.target for s in seen[1:]] == [EXT + "?a=1&a=2&b=%20x", EXT + "/%7Euser",
                                                EXT + "?q=caf%C3%A9"]
