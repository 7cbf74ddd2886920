"""The data plane over HTTP/2 (``[proxy] upstream_http2 = true``): the same pool contract as
:class:`~.data_plane.DataPlane` (bounded slots, bytes untouched, timeouts, verified TLS), on
httpx's HTTP/2 client, so the requests of every app connection are streams multiplexed over a
few TLS connections to the platform.

HTTP/2 is negotiated by TLS ALPN: an ``https://`` upstream that offers ``h2`` gets it; one that
does not, and every ``http://`` upstream, stays on HTTP/1.1 through the same client. Off by
default: on loopback it measured slower than aiohttp's HTTP/1.1 pool (h2's framing and flow
control are pure Python; ``docs/design/upstream-pool.md`` §4 and the ``transport`` benchmark).
httpx does not retry a request whose connection failed after it went out, for any method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from .data_plane import DataPlane, UpstreamAnswer, UpstreamTimeout, upstream_ssl_context
from .token_endpoint import UpstreamUnreachable


class _HttpxAnswer(UpstreamAnswer):
    def __init__(self, response: httpx.Response, plane: DataPlane) -> None:
        super().__init__(response.status_code, response.reason_phrase,
                         tuple(response.headers.raw), plane)
        self._response = response
        self.http_version = response.http_version
        self._closing: asyncio.Task[None] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise UpstreamTimeout("the platform stopped sending the answer") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(f"the answer was cut off: {type(exc).__name__}") from None

    def _close(self, reuse: bool) -> None:
        # httpx closes a response asynchronously: a read-to-the-end stream is finished already,
        # one cut short is reset (HTTP/2) or its connection closed (HTTP/1.1)
        self._closing = asyncio.get_running_loop().create_task(self._response.aclose())


class Http2DataPlane(DataPlane):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(
            http2=True, verify=upstream_ssl_context(self._verify), follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self._timeout, pool=None),
            limits=httpx.Limits(max_connections=self.size, max_keepalive_connections=self.size,
                                keepalive_expiry=self._keepalive))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def running(self) -> bool:
        return self._client is not None

    async def _trace(self, event: str, _: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            self.connects += 1

    async def _open(self, method: str, scheme: str, host: str, port: int, target: str,
                    headers: list[tuple[str, str]], body: bytes | None) -> UpstreamAnswer:
        assert self._client is not None
        authority = f"[{host}]" if ":" in host else host
        trace: Callable[[str, dict[str, Any]], Awaitable[None]] = self._trace
        request = httpx.Request(
            method, f"{scheme}://{authority}:{port}/", headers=headers, content=body or None,
            extensions={"target": target.encode("latin-1", "surrogateescape"),
                        "trace": trace})
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamTimeout("the platform did not answer in time") from None
        except httpx.ConnectError as exc:
            text = str(exc)
            reason = ("TLS: the platform's certificate is not trusted"
                      if "CERTIFICATE_VERIFY_FAILED" in text else "cannot connect")
            raise UpstreamUnreachable(reason) from None
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from None
        return _HttpxAnswer(response, self)
