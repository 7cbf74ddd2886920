"""Issue 13 point 1: token 401s from a front end that compresses its answers.

A real proxy in front of the emulator run with ``--compress CODING``; the app accepts every coding
(``Accept-Encoding: gzip, deflate, br, zstd``) as HTTP libraries do. The proxy must read the
decoded 401 body to see a token error (renew, replay), while the app still gets the answer as
the platform sent it (compressed). A 401 whose body is a decompression bomb, from a tiny spy
upstream, must leave the proxy's memory bounded and reach the app as it is.
"""

from __future__ import annotations

import json
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import brotli
import httpx
import pytest
from mitmproxy.net import encoding

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # installed with mitmproxy on Python < 3.14
    from backports import zstd

EXT = "/restapi/v1.0/account/~/extension/~"
ACCEPT_ALL = {"Accept-Encoding": "gzip, deflate, br, zstd"}
CODINGS = ["gzip", "br", "zstd", "deflate"]


def app(proxy) -> httpx.Client:
    """An app's client: accepts every coding, like requests/axios/Guzzle do by default."""
    client = proxy.http()
    client.headers.update(ACCEPT_ALL)
    return client


def oau_213(emulator) -> int:
    return emulator.counters()["api_401_by_code"].get("OAU-213", 0)


def get_raw(client: httpx.Client, method: str, path: str,
            **kwargs) -> tuple[httpx.Response, bytes]:
    """The answer and its body as the proxy sent it (still encoded)."""
    with client.stream(method, path, **kwargs) as response:
        return response, b"".join(response.iter_raw())


def decoded_json(response: httpx.Response, raw: bytes, coding: str) -> dict:
    assert response.headers.get("content-encoding") == coding  # passed on as sent
    return json.loads(encoding.decode(raw, coding))


@pytest.fixture(params=CODINGS)
def compressed(request, emulator_factory, proxy_factory):
    """(coding, emulator, proxy, OAU-213 count): the proxy's token has just been revoked."""
    coding = request.param
    emulator = emulator_factory("--auth-rate", "0", "--compress", coding)
    proxy = proxy_factory(emulator.url)
    with app(proxy) as client:
        response, raw = get_raw(client, "GET", EXT)
        assert response.status_code == 200
        assert decoded_json(response, raw, coding)["extensionNumber"] == "101"
    emulator.revoke_all()
    return coding, emulator, proxy, oau_213(emulator)


def test_compressed_token_401_is_renewed_and_replayed(compressed) -> None:
    """After a revocation, 30 of 30 requests get 200: the first one's compressed OAU-213 is
    recognised, the token renewed, the request replayed; the platform saw exactly one 401."""
    coding, emulator, proxy, before = compressed
    calls = emulator.counters()["token_calls"]
    statuses = []
    with app(proxy) as client:
        for _ in range(30):
            response, raw = get_raw(client, "GET", EXT)
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert decoded_json(response, raw, coding)["extensionNumber"] == "101"
    assert statuses == [200] * 30, statuses
    assert oau_213(emulator) == before + 1
    assert emulator.counters()["token_calls"] == calls + 1  # one renewal


def test_compressed_401_of_the_replay_is_recognised(compressed) -> None:
    """The renewed token dies too before the replay arrives (the emulator revokes the next
    token set it issues): the replay's compressed OAU-213 is recognised, a second renewal and
    replay follow, and the app gets its 200."""
    coding, emulator, proxy, before = compressed
    emulator.set_policy(revoke_issued=1)
    with app(proxy) as client:
        response, raw = get_raw(client, "POST", EXT + "/sms",
                                json={"to": [{"phoneNumber": "+15550100002"}], "text": "hi"})
    assert response.status_code == 200, raw
    assert "bodySha256" in decoded_json(response, raw, coding)
    assert oau_213(emulator) == before + 2


def test_compressed_401_of_a_streamed_request_renews_for_the_next(compressed) -> None:
    """A chunked upload streams through and cannot be replayed: its app gets the platform's
    (compressed) 401 as it was sent, and the proxy renews, so the next request succeeds."""
    coding, emulator, proxy, before = compressed

    def body() -> Iterator[bytes]:
        yield b'{"to": [{"phoneNumber": "+15550100002"}], '
        yield b'"text": "streamed"}'

    with app(proxy) as client:
        refused, raw = get_raw(client, "POST", EXT + "/sms", content=body(),
                               headers={"Content-Type": "application/json"})
        assert refused.status_code == 401
        assert decoded_json(refused, raw, coding)["errors"][0]["errorCode"] == "OAU-213"
        after, raw = get_raw(client, "GET", EXT)
    assert after.status_code == 200
    assert decoded_json(after, raw, coding)["extensionNumber"] == "101"
    assert oau_213(emulator) == before + 1


# -- a decompression bomb in a 401 ------------------------------------------------------------

TOKEN_ERROR = b'{"errorCode":"TokenInvalid","errors":[{"errorCode":"OAU-213"}]}'
BOMB_SIZE = 100 * 1024 * 1024  # decoded: 100 MB (valid JSON: a token error, then blanks)


def _bomb(coding: str) -> bytes:
    """``TOKEN_ERROR`` followed by 100 MB of spaces, compressed without building it whole."""
    block = b" " * (1024 * 1024)
    if coding == "zstd":
        zstd_obj = zstd.ZstdCompressor()
        parts = [zstd_obj.compress(TOKEN_ERROR)]
        parts += [zstd_obj.compress(block) for _ in range(BOMB_SIZE // len(block))]
        return b"".join([*parts, zstd_obj.flush()])
    if coding == "br":
        compressor = brotli.Compressor(quality=1)
        parts = [compressor.process(TOKEN_ERROR)]
        parts += [compressor.process(block) for _ in range(BOMB_SIZE // len(block))]
        return b"".join([*parts, compressor.finish()])
    zlib_obj = zlib.compressobj(9, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    parts = [zlib_obj.compress(TOKEN_ERROR)]
    parts += [zlib_obj.compress(block) for _ in range(BOMB_SIZE // len(block))]
    return b"".join([*parts, zlib_obj.flush()])


class _BombUpstream(BaseHTTPRequestHandler):
    """The token endpoint answers a token; every API call a bomb 401."""

    protocol_version = "HTTP/1.1"
    bomb = b""
    coding = "gzip"
    status = 401
    api_calls = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/restapi/oauth/token":
            token = {"access_token": "U1BZLXRva2Vu", "token_type": "bearer",
                     "expires_in": 3600, "refresh_token": "U1BZLXJlZnJlc2g",
                     "refresh_token_expires_in": 604800, "scope": "ReadAccounts",
                     "owner_id": "100001", "endpoint_id": "spy", "session_id": "spy"}
            self._send(200, json.dumps(token).encode(), {"Content-Type": "application/json"})
        else:
            self.do_GET()

    def do_GET(self) -> None:
        type(self).api_calls += 1
        self._send(self.status, self.bomb, {"Content-Type": "application/json",
                                    "Content-Encoding": self.coding})


@pytest.fixture
def bomb_upstream(request) -> Iterator[tuple[str, type[_BombUpstream]]]:
    coding, status = request.param if isinstance(request.param, tuple) else (request.param, 401)
    handler = type("Handler", (_BombUpstream,),
                   {"bomb": _bomb(coding), "coding": coding, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join(5)


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("bomb_upstream", CODINGS, indirect=True)
def test_decompression_bomb_401_is_passed_through_in_bounded_memory(bomb_upstream,
                                                                     proxy_factory) -> None:
    url, upstream = bomb_upstream
    proxy = proxy_factory(url)
    baseline = _peak_rss(proxy.proc.pid)
    with app(proxy) as client:
        for method in ("GET", "POST", "GET", "POST"):
            body = b"{}" if method == "POST" else None
            response, raw = get_raw(client, method, EXT, content=body)
            assert response.status_code == 401
            assert response.headers["content-encoding"] == upstream.coding
            assert raw == upstream.bomb  # as the upstream sent it, not decoded
    grown = _peak_rss(proxy.proc.pid) - baseline
    # decoding it once would take 100 MB, and as much again to parse it
    assert grown < 50 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert upstream.api_calls == 4  # no renewal, no replay: not read as a token error


# -- a decompression bomb in a 200 JSON answer (the links in it would be rewritten) ------------

@pytest.mark.parametrize("bomb_upstream", [(c, 200) for c in CODINGS], indirect=True,
                         ids=CODINGS)
def test_decompression_bomb_answer_is_passed_through_in_bounded_memory(bomb_upstream,
                                                                        proxy_factory) -> None:
    """Buffered (under stream_threshold): decoding it for link rewriting stops at its bound,
    and the app gets the answer exactly as the platform sent it."""
    url, upstream = bomb_upstream
    proxy = proxy_factory(url, stream_threshold=len(upstream.bomb) + 1)
    baseline = _peak_rss(proxy.proc.pid)
    with app(proxy) as client:
        for _ in range(3):
            response, raw = get_raw(client, "GET", EXT)
            assert response.status_code == 200
            assert raw == upstream.bomb
    grown = _peak_rss(proxy.proc.pid) - baseline
    assert grown < 50 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("bomb_upstream", [(c, 200) for c in CODINGS], indirect=True,
                         ids=CODINGS)
def test_streamed_decompression_bomb_cuts_the_app_connection(bomb_upstream,
                                                             proxy_factory) -> None:
    """Streamed (over stream_threshold), its links rewritten as it passes: past the bound the
    app's connection is cut before the body's end (a clean end would pass a truncated JSON for
    whole), memory stays bounded and the proxy goes on serving."""
    url, _upstream = bomb_upstream
    proxy = proxy_factory(url, stream_threshold=1024)
    baseline = _peak_rss(proxy.proc.pid)
    for _ in range(2):
        with app(proxy) as client, pytest.raises(httpx.RemoteProtocolError):
            get_raw(client, "GET", EXT)
    grown = _peak_rss(proxy.proc.pid) - baseline
    assert grown < 50 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    assert "upstream answer to GET /restapi/v1.0/account/~/extension/~ cut off for the app: " \
        "it decodes to more than 64 times its size" in proxy.logs()
    with app(proxy) as client:
        response = client.get("/_emulator/policy")  # answered by the proxy itself
    assert response.status_code == 404 and "TPX-NOT-SERVED" in response.text
