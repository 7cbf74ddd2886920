"""An HTTPS upstream and apps that open a connection per request (issue 16, items 1 and 4).

With the shared pool (the default) every app connection's request leaves through the same few
upstream TLS connections, the upstream's certificate verified. Without it (``upstream_pool =
false``, and for what never takes the pool: streamed uploads, WebSocket upgrades) mitmproxy
opens one upstream TLS connection per app connection; with ``UpstreamTlsResumption`` each one
after the first resumes the session of an earlier one.

The upstream is the emulator behind a TLS-terminating relay (Python ``ssl`` on loopback, with a
throwaway CA). The relay notes, for every TLS connection, whether the session was reused and
the first request line it carried. The apps are raw sockets: one connection, one request, close.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path

from tests.support.certs import make_tls_files
from tests.support.proxy import jwt_account, start_proxy

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "resume-app-key-0123456789"
REQUESTS = 12


class TlsRelay:
    """TLS in, plain TCP out to ``target``; one thread, its own loop."""

    def __init__(self, target: tuple[str, int], cert_dir: Path) -> None:
        self.target = target
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_dir / "server.pem", cert_dir / "server.key")
        # [session reused, first request line, closed by the proxy]
        self.connections: list[list] = []
        self.port = 0
        self.handshakes_completed = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TlsRelay:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        self.handshakes_completed += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        entry: list = [bool(ssl_object.session_reused), "", False]
        self.connections.append(entry)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       first: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if first and not entry[1]:
                        entry[1] = chunk.split(b"\r\n", 1)[0].decode("latin-1")
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                if first:
                    entry[2] = True  # the proxy ended its side
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def api_connections(self) -> list[bool]:
        return [entry[0] for entry in list(self.connections) if EXT in entry[1]]

    def api_connections_closed(self) -> int:
        return sum(1 for entry in list(self.connections) if EXT in entry[1] and entry[2])


def one_request(port: int, target: str = EXT) -> bytes:
    """A new connection, one request, read to the end, close: what a PHP script does."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_connection_per_request_apps_resume_the_upstream_tls_session(
        tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    host, port = emulator.url.removeprefix("http://").split(":")
    cert_dir = tmp_path / "tls"
    make_tls_files(cert_dir)
    with TlsRelay((host, int(port)), cert_dir) as relay:
        # loopback upstream with the test CA: verification off is allowed only on this host
        proxy = start_proxy(tmp_path, f"https://127.0.0.1:{relay.port}",
                            accounts=[jwt_account()],
                            clients=[{"name": "app", "account": "main", "key": KEY}],
                            verify_upstream_tls=False, upstream_pool=False)
        try:
            proxy_port = int(proxy.url.rsplit(":", 1)[1])
            for index in range(REQUESTS):  # bounded
                answer = one_request(proxy_port)
                assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
                # the proxy keeps the session when its upstream connection ends: wait until
                # the relay sees that end before the next app connects (bounded)
                for _ in range(500):
                    if relay.api_connections_closed() > index:
                        break
                    time.sleep(0.01)
                time.sleep(0.05)
            reused = relay.api_connections()
        finally:
            proxy.stop()
    print(f"figures tls resumption: {len(reused)} upstream TLS connections for {REQUESTS} "
          f"app connections, {sum(reused)} resumed: {reused}")
    assert len(reused) == REQUESTS  # one upstream connection per app connection (mitmproxy)
    assert not reused[0]  # nothing to resume yet
    # all but the first could; a few spare for a loaded machine (without the addon: 0)
    assert sum(reused) >= REQUESTS - 4, reused


def test_connection_per_request_apps_share_pooled_verified_upstream_connections(
        tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    host, port = emulator.url.removeprefix("http://").split(":")
    cert_dir = tmp_path / "tls"
    ca = make_tls_files(cert_dir)
    with TlsRelay((host, int(port)), cert_dir) as relay:
        # verification on: the test CA is trusted through SSL_CERT_FILE, as an operator would
        proxy = start_proxy(tmp_path, f"https://127.0.0.1:{relay.port}",
                            accounts=[jwt_account()],
                            clients=[{"name": "app", "account": "main", "key": KEY}],
                            env={"SSL_CERT_FILE": str(ca)})
        try:
            proxy_port = int(proxy.url.rsplit(":", 1)[1])
            for _ in range(REQUESTS):  # bounded
                answer = one_request(proxy_port)
                assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            pooled = relay.api_connections()
        finally:
            proxy.stop()
    print(f"figures shared pool: {len(pooled)} upstream TLS connections for {REQUESTS} "
          f"app connections")
    assert 1 <= len(pooled) <= 2, pooled  # without the pool: one per app connection


def test_an_untrusted_upstream_certificate_is_refused_by_the_pool(
        tmp_path: Path, emulator_factory) -> None:
    """The media host (recordings, ``/_media/…``) is the TLS relay with a CA nobody trusts;
    the platform is the plain emulator, so the login works and only the pool meets the
    certificate."""
    emulator = emulator_factory("--auth-rate", "0")
    host, port = emulator.url.removeprefix("http://").split(":")
    cert_dir = tmp_path / "tls"
    ca = make_tls_files(cert_dir)
    media = "/_media/restapi/v1.0/account/~/recording/1/content"
    with TlsRelay((host, int(port)), cert_dir) as relay:
        for env, expected in (({}, b"HTTP/1.1 502"), ({"SSL_CERT_FILE": str(ca)}, None)):
            proxy = start_proxy(tmp_path, emulator.url, accounts=[jwt_account()],
                                media_upstream=f"https://127.0.0.1:{relay.port}",
                                clients=[{"name": "app", "account": "main", "key": KEY}],
                                env=env)
            try:
                answer = one_request(int(proxy.url.rsplit(":", 1)[1]), media)
            finally:
                proxy.stop()
            if expected is not None:
                assert answer.startswith(expected), answer[:300]
                assert b"TPX-UPSTREAM-UNREACHABLE" in answer
                assert b"certificate is not trusted" in answer
                assert relay.handshakes_completed == 0  # nothing went to it unverified
            else:  # trusted: it reached the media host (the emulator answers the path)
                assert not answer.startswith(b"HTTP/1.1 502"), answer[:300]
                assert relay.handshakes_completed >= 1
