"""The data plane: one process-wide pool of keep-alive connections to the platform, shared by
every app connection (forwarded requests, :mod:`.forward`) and by replays (:mod:`.replay_sender`).

Built on aiohttp's client (``docs/design/upstream-pool.md`` §1a: httpx measured 2.8 times slower
here). What it guarantees:

* **bounded**: at most ``size`` requests are out at once (a slot is held until the answer's
  body is read or released); a request that finds no free slot within ``acquire_timeout``
  fails with :class:`PoolBusy` (the app gets a 503), it never queues unboundedly;
* **bytes as they are**: no decompression (``auto_decompress=False``), no headers of its own
  (``skip_auto_headers``), the request target exactly as the app sent it;
* **stale connections**: a pooled connection the platform closed while idle that fails before
  the answer's headers is retried once by aiohttp, and only for idempotent methods
  (``aiohttp/client.py``, ``IDEMPOTENT_METHODS``); a POST gets :class:`UpstreamUnreachable`
  and is sent once;
* **timeouts**: connecting and each read are bounded by ``upstream_timeout``;
* **TLS**: the platform's certificate is verified as the token endpoint's client does it
  (``httpx.create_ssl_context``: the certifi bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``),
  unless ``[proxy] verify_upstream_tls = false`` (loopback tests only). One TLS handshake per
  pooled connection, not per app connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable

import aiohttp
import httpx
from yarl import URL

from .token_endpoint import UpstreamUnreachable

# aiohttp would add these on its own; the request goes out with the app's headers only
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")
# seconds an idle pooled connection is kept: nginx's default upstream keepalive_timeout
DEFAULT_KEEPALIVE = 60.0


class PoolBusy(Exception):
    """Every connection of the data-plane pool stayed busy for the whole acquire timeout."""


class UpstreamTimeout(UpstreamUnreachable):
    """The platform accepted the request but did not answer (or stalled) within the timeout."""


def upstream_ssl_context(verify: bool) -> ssl.SSLContext | bool:
    """The TLS settings every way out to the platform uses (False: no verification)."""
    if not verify:
        return False
    return httpx.create_ssl_context(verify=True, trust_env=True)


class UpstreamAnswer:
    """An answer whose headers arrived; its body is read with :meth:`read` or :meth:`chunks`,
    and :meth:`release` gives the connection (and the pool slot) back — always call it."""

    status: int
    reason: str
    raw_headers: tuple[tuple[bytes, bytes], ...]

    def __init__(self, status: int, reason: str, raw_headers: tuple[tuple[bytes, bytes], ...],
                 plane: DataPlane) -> None:
        self.status, self.reason, self.raw_headers = status, reason, raw_headers
        self._plane = plane
        self._released = False

    async def read(self) -> bytes:
        """The whole (still encoded) body."""
        return b"".join([chunk async for chunk in self.chunks()])

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (still encoded), chunk by chunk."""
        raise NotImplementedError

    def release(self, reuse: bool = True) -> None:
        """Done with the answer: a fully read body gives the connection back to the pool;
        ``reuse=False`` (or a body not read to the end) closes it (HTTP/2: resets the
        stream)."""
        if self._released:
            return
        self._released = True
        self._close(reuse)
        self._plane._free_slot()

    def _close(self, reuse: bool) -> None:
        raise NotImplementedError


class _AiohttpAnswer(UpstreamAnswer):
    def __init__(self, response: aiohttp.ClientResponse, plane: DataPlane) -> None:
        super().__init__(response.status, response.reason or "",
                         tuple(response.raw_headers), plane)
        self._response = response

    async def read(self) -> bytes:
        try:
            return await self._response.content.read()
        except TimeoutError:
            raise UpstreamTimeout("the platform stopped sending the answer") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"the answer was cut off: {_describe(exc)}") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            raise UpstreamTimeout("the platform stopped sending the answer") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"the answer was cut off: {_describe(exc)}") from None

    def _close(self, reuse: bool) -> None:
        if reuse:
            self._response.release()
        else:
            self._response.close()


class DataPlane:
    """The pool. Open with :meth:`start` inside the running loop; :meth:`close` on the way out."""

    def __init__(self, *, size: int, timeout: float, acquire_timeout: float,
                 verify: bool, keepalive: float = DEFAULT_KEEPALIVE) -> None:
        if size < 1:
            raise ValueError("the upstream pool needs at least one connection")
        self.size = size
        self._timeout = timeout
        self._acquire_timeout = acquire_timeout
        self._verify = verify
        self._keepalive = keepalive
        self._slots = asyncio.Semaphore(size)
        self._session: aiohttp.ClientSession | None = None
        self.connects = 0  # new upstream connections made (TLS handshakes, when https)
        self.busy = 0  # requests out at this moment (each holds a pooled connection)
        self.refused = 0  # requests refused with PoolBusy

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.size, limit_per_host=0, keepalive_timeout=self._keepalive,
            ssl=upstream_ssl_context(self._verify), enable_cleanup_closed=False)
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._connected)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout,
                                          sock_read=self._timeout),
            trace_configs=[trace], cookie_jar=aiohttp.DummyCookieJar(),
            requote_redirect_url=False)

    async def _connected(self, *_: object) -> None:
        self.connects += 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _free_slot(self) -> None:
        self.busy -= 1
        self._slots.release()

    async def send(self, method: str, scheme: str, host: str, port: int, target: str,
                   headers: Iterable[tuple[str, str]], body: bytes | None) -> UpstreamAnswer:
        """Send one request; the answer's headers, or :class:`PoolBusy`,
        :class:`UpstreamTimeout`, :class:`UpstreamUnreachable`."""
        if not self.running:
            raise UpstreamUnreachable("the upstream pool is not running")
        try:
            async with asyncio.timeout(self._acquire_timeout):
                await self._slots.acquire()
        except TimeoutError:
            self.refused += 1
            raise PoolBusy(f"all {self.size} upstream connections stayed busy for "
                           f"{self._acquire_timeout:g} s") from None
        self.busy += 1
        try:
            return await self._open(method, scheme, host, port, target, list(headers), body)
        except BaseException:
            self._free_slot()
            raise

    @property
    def running(self) -> bool:
        return self._session is not None

    async def _open(self, method: str, scheme: str, host: str, port: int, target: str,
                    headers: list[tuple[str, str]], body: bytes | None) -> UpstreamAnswer:
        """The transport: send the request, return once the answer's headers are in."""
        assert self._session is not None
        try:
            response = await self._session.request(
                method, request_url(scheme, host, port, target), headers=headers,
                data=body if body else None, allow_redirects=False, auto_decompress=False)
        except TimeoutError:
            raise UpstreamTimeout("the platform did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(_describe(exc)) from None
        except ValueError as exc:  # yarl/aiohttp refusing a target or header
            raise UpstreamUnreachable(f"request not sendable: {exc}") from None
        return _AiohttpAnswer(response, self)


def request_url(scheme: str, host: str, port: int, target: str) -> URL:
    """The URL aiohttp connects to, with the request target kept byte for byte."""
    authority = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    origin = f"{scheme}://{authority}" + ("" if port == default else f":{port}")
    if not target.startswith("/"):
        target = "/" + target
    return URL(origin + target, encoded=True)


def _describe(exc: BaseException) -> str:
    """What went wrong, without echoing anything the request carried."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS: the platform's certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the platform closed the connection"
    return type(exc).__name__


@contextlib.asynccontextmanager
async def data_plane(size: int, upstream_timeout: float, acquire_timeout: float, verify: bool,
                     keepalive: float = DEFAULT_KEEPALIVE, http2: bool = False
                     ) -> AsyncIterator[DataPlane]:
    """A started data plane (HTTP/1.1 on aiohttp, or HTTP/2 where the upstream offers it),
    closed on exit."""
    if http2:
        from .data_plane_h2 import Http2DataPlane

        plane: DataPlane = Http2DataPlane(size=size, timeout=upstream_timeout,
                                          acquire_timeout=acquire_timeout, verify=verify,
                                          keepalive=keepalive)
    else:
        plane = DataPlane(size=size, timeout=upstream_timeout, acquire_timeout=acquire_timeout,
                          verify=verify, keepalive=keepalive)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.close()
