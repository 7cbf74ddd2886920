"""PROTOTYPE for issue 16 (docs/design/upstream-pool.md, option 1a) — not product code.

A mitmproxy addon that answers every flow in the ``request`` hook through ONE process-wide
``httpx.AsyncClient`` (a keep-alive pool of TLS connections to the upstream, shared by every
client connection), instead of letting mitmproxy open a server connection per client
connection. Load it into mitmdump in reverse mode (the reverse target only fixes Host/SNI;
mitmproxy itself never connects):

    mitmdump --mode reverse:https://127.0.0.1:PORT -s bench/proto_pool.py \
        --set connection_strategy=lazy --set stream_large_bodies=1m

Environment: ``POOL_UPSTREAM`` (https://host:port, default: the reverse target),
``POOL_CA`` (CA bundle to verify the upstream), ``POOL_HTTP2=1`` (HTTP/2 to the upstream),
``POOL_SIZE`` (max connections, default 100), ``POOL_STREAM_THRESHOLD`` (bytes; bigger or
unsized answers stream, default 1 MiB). For uvloop start it with
bench/proto_uvloop_mitmdump.py instead of mitmdump.

Answers up to the threshold are read whole and set as ``flow.response``: mitmproxy then runs
the ``responseheaders`` and ``response`` hooks as usual (so tokenproxy's Replay and Links
would work unchanged). mitmproxy sends a response set by a hook in one piece
(``HttpStream.send_response``), so for bigger answers this module adds what mitmproxy lacks:
a *pooled body* — the HTTP layer sends the headers, then the body arrives as ``PoolChunk``
events fed through ``ConnectionHandler.server_event`` by a pump task that awaits
``drain_writers()`` after each chunk (the same back-pressure mitmproxy applies to its own
server reads: O(1) memory). ``response.stream`` (a callable, e.g. tokenproxy's link rewriter)
is applied to every chunk; an upstream error mid-body cuts the client connection
(``handle_protocol_error``), as tokenproxy's stream_abort does. Request bodies that mitmproxy
would stream (``flow.request.stream``) are left to mitmproxy's own server connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from mitmproxy import ctx, http
from mitmproxy import flow as mflow
from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http import (
    DropStream,
    ErrorCode,
    HttpErrorHook,
    HttpEvent,
    HttpLayer,
    HttpStream,
    RequestProtocolError,
    ResponseData,
    ResponseHeaders,
    ResponseProtocolError,
    SendHttp,
)

log = logging.getLogger("proto_pool")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
KEY = "proto_pool"


class PoolChunk(HttpEvent):
    """A piece of a pooled answer's body for stream ``stream_id``: ``data`` None = the end.
    An HttpEvent: ``HttpStream._handle_event`` accepts only those (``@expect``). No
    dataclass: mitmproxy loads this script outside ``sys.modules``."""

    def __init__(self, stream_id: int, data: bytes | None, error: str | None = None) -> None:
        self.stream_id, self.data, self.error = stream_id, data, error

    def __repr__(self) -> str:
        size = None if self.data is None else len(self.data)
        return f"PoolChunk(stream_id={self.stream_id}, bytes={size}, error={self.error!r})"


class _Pending:
    """A streamed pooled answer: the body still to come, and the stream that will carry it."""

    def __init__(self, chunks: AsyncIterator[bytes], close: Callable[[], Awaitable[None]],
                 errors: tuple[type[BaseException], ...]) -> None:
        self.chunks, self.close, self.errors = chunks, close, errors  # any pool client
        self.stream_id: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.cancelled = False  # the app hung up: stop reading the upstream
        self.task: asyncio.Task | None = None  # the pump (a reference keeps it alive)


# ----------------------------------------------------------------- the mitmproxy patches
_original_send_response = HttpStream.send_response
_original_layer_event = HttpLayer._handle_event
_original_protocol_error = HttpStream.handle_protocol_error


def _handle_protocol_error(self: HttpStream, event):
    """The app hung up on a pooled flow: mitmproxy would pass the error on to the flow's server
    connection, which was never opened (KeyError in HttpLayer.event_to_child). Stop the pump
    instead; the error hook runs as usual."""
    pending: _Pending | None = self.flow.metadata.get(KEY) if self.flow else None
    if pending is None or not isinstance(event, RequestProtocolError):
        return (yield from _original_protocol_error(self, event))
    pending.cancelled = True
    if self.server_state not in (self.state_done, self.state_errored):
        self.flow.error = mflow.Error(event.message)
        yield HttpErrorHook(self.flow)
    self.client_state = self.server_state = self.state_errored
    self.flow.live = False
    yield DropStream(self.stream_id)


def _send_response(self: HttpStream, already_streamed: bool = False):
    pending: _Pending | None = self.flow.metadata.get(KEY)
    if already_streamed or pending is None or pending.stream_id.done():
        return (yield from _original_send_response(self, already_streamed))
    # a pooled answer whose body is still upstream: headers now, the body as PoolChunks
    yield SendHttp(ResponseHeaders(self.stream_id, self.flow.response, end_stream=False),
                   self.context.client)
    self.server_state = self._state_pool_body  # type: ignore[attr-defined]
    pending.stream_id.set_result(self.stream_id)


def _state_pool_body(self: HttpStream, event: events.Event):
    if not isinstance(event, PoolChunk):
        return
    response = self.flow.response
    if event.error is not None:
        yield from self.handle_protocol_error(ResponseProtocolError(
            self.stream_id, f"upstream answer cut off: {event.error}",
            ErrorCode.GENERIC_SERVER_ERROR))
        return
    data = event.data if event.data is not None else b""
    if callable(response.stream):
        chunks = response.stream(data)
        chunks = [chunks] if isinstance(chunks, bytes) else chunks
    else:
        chunks = [data] if data else []
    for chunk in chunks:
        if chunk:
            yield SendHttp(ResponseData(self.stream_id, chunk), self.context.client)
    if event.data is None:
        response.timestamp_end = time.time()
        yield from _original_send_response(self, already_streamed=True)  # response hook, end


def _layer_event(self: HttpLayer, event: events.Event):
    if isinstance(event, PoolChunk):
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            yield from self.event_to_child(stream, event)
        return
    yield from _original_layer_event(self, event)


HttpStream.send_response = _send_response  # type: ignore[method-assign]
HttpStream._state_pool_body = _state_pool_body  # type: ignore[attr-defined]
HttpLayer._handle_event = _layer_event  # type: ignore[method-assign]
HttpStream.handle_protocol_error = _handle_protocol_error  # type: ignore[method-assign]


# ----------------------------------------------------------------- the addon
class PoolForward:
    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None
        self.threshold = int(os.environ.get("POOL_STREAM_THRESHOLD", str(1 << 20)))
        self.streamed = 0
        self.buffered = 0

    def running(self) -> None:
        upstream = os.environ.get("POOL_UPSTREAM") or ctx.options.mode[0].split(":", 1)[1]
        verify: ssl.SSLContext | bool = True
        if os.environ.get("POOL_CA"):
            verify = ssl.create_default_context(cafile=os.environ["POOL_CA"])
        size = int(os.environ.get("POOL_SIZE", "100"))
        self.client = httpx.AsyncClient(
            base_url=upstream, verify=verify, http2=os.environ.get("POOL_HTTP2") == "1",
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size,
                                keepalive_expiry=60),
            timeout=httpx.Timeout(30.0, pool=30.0), follow_redirects=False)
        log.warning("proto_pool: forwarding to %s via a shared pool (http2=%s, size=%d), "
                    "event loop %s", upstream, os.environ.get("POOL_HTTP2") == "1", size,
                    type(asyncio.get_running_loop()).__module__)

        self.session = None
        if os.environ.get("POOL_CLIENT") == "aiohttp":  # aiohttp's pool (C parser) instead
            import aiohttp
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=size, keepalive_timeout=60,
                                               ssl=verify if verify is not True else True),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding",
                                                          "Accept"))
            self.upstream = upstream.rstrip("/")

    async def done(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.session is not None:
            await self.session.close()

    async def _request_aiohttp(self, flow: http.HTTPFlow) -> None:
        """:meth:`request` with aiohttp's pool: the same decisions, the same pooled body."""
        import aiohttp
        from yarl import URL
        request = flow.request
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in request.headers.fields if k.lower() not in HOP_BY_HOP]
        started = time.time()
        try:
            answer = await self.session.request(
                request.method, URL(self.upstream + request.path, encoded=True),
                headers=headers, data=request.raw_content or None, allow_redirects=False)
        except aiohttp.ClientError as exc:
            flow.response = http.Response.make(502, f"upstream: {type(exc).__name__}\n")
            return
        fields = [(k, v) for k, v in answer.raw_headers if k.lower() not in HOP_BY_HOP]
        length = answer.headers.get("content-length", "")
        status = answer.status
        bodiless = request.method == "HEAD" or status in (204, 304) or status < 200
        whole = (bodiless or status == 401
                 or (length.isdigit() and int(length) <= self.threshold))
        content = b""
        if whole:
            try:
                raw = await answer.content.read()
            except aiohttp.ClientError as exc:
                flow.response = http.Response.make(502, f"upstream: {type(exc).__name__}\n")
                return
            finally:
                answer.release()
            if bodiless:
                if length and request.method == "HEAD":
                    fields.append((b"content-length", length.encode()))
            else:
                fields.append((b"content-length", str(len(raw)).encode()))
            content = raw
        elif length.isdigit():
            fields.append((b"content-length", length.encode()))
        elif request.http_version == "HTTP/1.1":
            fields.append((b"transfer-encoding", b"chunked"))
        response = http.Response(
            http_version=b"HTTP/1.1", status_code=status,
            reason=(answer.reason or "").encode("latin-1", "replace"),
            headers=http.Headers(fields), content=content, trailers=None,
            timestamp_start=started, timestamp_end=time.time() if whole else None)
        if not whole:
            async def close() -> None:
                answer.release()
            response.stream = True
            pending = flow.metadata[KEY] = _Pending(answer.content.iter_any(), close,
                                                    (aiohttp.ClientError,))
            pending.task = asyncio.get_running_loop().create_task(self._pump(flow, pending))
        flow.response = response

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.request.stream or self.client is None:
            return  # answered already, or a streamed upload: mitmproxy's own connection
        if self.session is not None:
            return await self._request_aiohttp(flow)
        request = flow.request
        headers = [(k, v) for k, v in request.headers.fields if k.lower() not in HOP_BY_HOP]
        outgoing = httpx.Request(
            request.method, str(self.client.base_url).rstrip("/") + request.path,
            headers=headers, content=request.raw_content or b"",
            extensions={"target": request.path.encode("latin-1", "surrogateescape")})
        started = time.time()
        try:
            answer = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            flow.response = http.Response.make(502, f"upstream: {type(exc).__name__}\n")
            return
        fields = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_BY_HOP]
        length = answer.headers.get("content-length", "")
        bodiless = request.method == "HEAD" or answer.status_code in (204, 304) \
            or answer.status_code < 200
        whole = (bodiless or answer.status_code == 401
                 or (length.isdigit() and int(length) <= self.threshold))
        if whole:
            try:
                raw = b"".join([chunk async for chunk in answer.aiter_raw()])
            except httpx.HTTPError as exc:
                flow.response = http.Response.make(502, f"upstream: {type(exc).__name__}\n")
                return
            finally:
                await answer.aclose()
            if bodiless:  # HEAD keeps the upstream's Content-Length; 204/304 have none
                if length and request.method == "HEAD":
                    fields.append((b"content-length", length.encode()))
            else:
                fields.append((b"content-length", str(len(raw)).encode()))
            content: bytes | None = raw
            self.buffered += 1
        else:
            if length.isdigit():
                fields.append((b"content-length", length.encode()))
            elif request.http_version == "HTTP/1.1":
                fields.append((b"transfer-encoding", b"chunked"))
            content = b""
            self.streamed += 1
        response = http.Response(
            http_version=b"HTTP/1.1", status_code=answer.status_code,
            reason=answer.reason_phrase.encode("latin-1", "replace"),
            headers=http.Headers(fields), content=content, trailers=None,
            timestamp_start=started, timestamp_end=time.time() if whole else None)
        if not whole:
            response.stream = True
            pending = flow.metadata[KEY] = _Pending(answer.aiter_raw(), answer.aclose,
                                                    (httpx.HTTPError,))
            pending.task = asyncio.get_running_loop().create_task(self._pump(flow, pending))
        flow.response = response

    async def _pump(self, flow: http.HTTPFlow, pending: _Pending) -> None:
        """Feed the streamed body into the flow's HTTP stream, one chunk per drain."""
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id)
        try:
            stream_id = await asyncio.wait_for(pending.stream_id, 30)
            try:
                async for chunk in pending.chunks:
                    if pending.cancelled or \
                            proxyserver.connections.get(flow.client_conn.id) is not handler:
                        return  # the app went away: stop reading the upstream
                    await handler.server_event(PoolChunk(stream_id, chunk))
                    await handler.drain_writers()  # back-pressure: O(1) memory
            except pending.errors as exc:
                await handler.server_event(PoolChunk(stream_id, None, type(exc).__name__))
                return
            await handler.server_event(PoolChunk(stream_id, None))
        except TimeoutError:
            log.warning("proto_pool: stream never started (flow killed?)")
        finally:
            await pending.close()


addons = [PoolForward()]
