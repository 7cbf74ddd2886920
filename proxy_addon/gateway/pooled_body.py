"""Stream a pooled answer's body to the app: what mitmproxy lacks for answers that an addon
produces (:mod:`.forward`) rather than a server connection of its own.

mitmproxy sends a response set by a hook in one piece (``HttpStream.send_response``), so a
500 MB recording fetched through the shared pool would be held whole. :func:`install` extends
mitmproxy's HTTP stream (version-guarded, like :mod:`.early_answer` and :mod:`.stream_abort`;
``docs/design/upstream-pool.md`` §1a):

1. ``HttpStream.send_response``: for a flow whose answer carries a :class:`PooledBody`, send the
   headers only and switch the stream to the *pooled body* state;
2. ``HttpLayer._handle_event``: route :class:`PoolChunk` events to their stream; the pump
   (:meth:`PooledBody.pump`) feeds them through ``ConnectionHandler.server_event`` and waits
   for ``drain_writers()`` after each, the back-pressure mitmproxy applies to its own server
   reads: one chunk in memory whatever the body's size or the app's reading speed;
3. ``HttpStream.handle_protocol_error``: an app that hangs up stops the pump (mitmproxy would
   pass the error on to a server connection that was never opened).

In the pooled state each chunk goes through ``response.stream`` (the link rewriter, when
:mod:`.links` set one; :class:`~.link_stream.StreamAborted` cuts the app's connection as
:mod:`.stream_abort` does); at the end the stock ``send_response(already_streamed=True)`` runs
the ``response`` hook and ends the message. An upstream error mid-body cuts the app's connection
(HTTP/1: closed before the last chunk; HTTP/2: stream reset), never ends the body cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from mitmproxy import ctx, http

from .link_stream import StreamAborted

log = logging.getLogger("tokenproxy.pooled_body")

METADATA_KEY = "tokenproxy.pooled_body"
_GONE = -1  # the stream id a body gets when the app left before its headers were sent


class PooledBody:
    """A pooled answer's body still upstream, and the stream of the app's flow it goes to."""

    def __init__(self, chunks: AsyncIterator[bytes], release: Callable[[bool], None],
                 start_timeout: float) -> None:
        self._chunks = chunks
        self._release = release  # reuse the upstream connection (True) or close it (False)
        self._start_timeout = start_timeout
        self.stream_id: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None

    def attach(self, flow: http.HTTPFlow) -> None:
        """Carry this body in ``flow``'s answer; the pump starts now and waits for the
        headers to be out."""
        flow.metadata[METADATA_KEY] = self
        self.task = asyncio.get_running_loop().create_task(self.pump(flow))

    def cancel(self) -> None:
        self.cancelled = True
        if not self.stream_id.done():
            self.stream_id.set_result(_GONE)

    async def pump(self, flow: http.HTTPFlow) -> None:
        complete = False
        try:
            proxyserver = ctx.master.addons.get("proxyserver")
            handler = proxyserver.connections.get(flow.client_conn.id)
            try:
                async with asyncio.timeout(self._start_timeout):
                    stream_id = await self.stream_id
            except TimeoutError:
                log.warning("a streamed answer to %s %s never started (flow ended?)",
                            flow.request.method, flow.request.path.split("?", 1)[0])
                return
            if stream_id == _GONE or handler is None:
                return
            try:
                async for chunk in self._chunks:
                    if self.cancelled or proxyserver.connections.get(flow.client_conn.id) \
                            is not handler:
                        return  # the app went away: stop reading the upstream
                    await handler.server_event(PoolChunk(stream_id, chunk))
                    await handler.drain_writers()
            except Exception as exc:
                if not self.cancelled:
                    await handler.server_event(PoolChunk(stream_id, None, str(exc)))
                return
            if not self.cancelled:
                complete = True
                await handler.server_event(PoolChunk(stream_id, None))
        finally:
            self._release(complete)


def pooled_body_of(flow: http.HTTPFlow | None) -> PooledBody | None:
    return flow.metadata.get(METADATA_KEY) if flow is not None else None


_PoolChunk: type | None = None


def PoolChunk(stream_id: int, data: bytes | None, error: str | None = None) -> Any:
    """A piece of a pooled body (``data`` None: the end, or ``error``), as an HTTP event."""
    assert _PoolChunk is not None, "pooled_body.install() first"
    return _PoolChunk(stream_id, data, error)


def install() -> bool:
    """Extend mitmproxy's HTTP layer for pooled bodies; False (logged) if this mitmproxy
    version lacks what is extended: then nothing is forwarded through the pool."""
    global _PoolChunk
    try:
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
        from mitmproxy.proxy.server import ConnectionHandler
    except ImportError:  # pragma: no cover - depends on the mitmproxy version
        log.warning("mitmproxy's HTTP layer changed: the shared upstream pool is off")
        return False
    needed = (getattr(HttpStream, "send_response", None),
              getattr(HttpStream, "handle_protocol_error", None),
              getattr(HttpLayer, "_handle_event", None),
              getattr(HttpLayer, "event_to_child", None),
              getattr(ConnectionHandler, "server_event", None),
              getattr(ConnectionHandler, "drain_writers", None))
    if any(part is None for part in needed):  # pragma: no cover - depends on the version
        log.warning("mitmproxy's HTTP layer changed: the shared upstream pool is off")
        return False
    original_send, original_error, original_layer_event = needed[:3]
    if getattr(original_send, "tokenproxy_pooled_body", False):
        return True

    class _Chunk(HttpEvent):
        """Not a dataclass: HttpEvent subclasses carry ``stream_id`` and compare by it."""

        def __init__(self, stream_id: int, data: bytes | None, error: str | None) -> None:
            self.stream_id, self.data, self.error = stream_id, data, error

        def __repr__(self) -> str:
            size = None if self.data is None else len(self.data)
            return f"PoolChunk(stream_id={self.stream_id}, bytes={size}, error={self.error!r})"

    _PoolChunk = _Chunk

    def send_response(self, already_streamed: bool = False):  # type: ignore[no-untyped-def]
        body = pooled_body_of(self.flow)
        if already_streamed or body is None or body.stream_id.done():
            return (yield from original_send(self, already_streamed))
        # the body is still upstream: headers now, then the pooled-body state
        yield SendHttp(ResponseHeaders(self.stream_id, self.flow.response, end_stream=False),
                       self.context.client)
        self.server_state = self.state_pooled_body
        body.stream_id.set_result(self.stream_id)

    def state_pooled_body(self, event):  # type: ignore[no-untyped-def]
        if not isinstance(event, _Chunk):
            return
        response = self.flow.response
        if event.error is not None:
            request = self.flow.request
            log.warning("upstream answer to %s %s cut off for the app: %s", request.method,
                        request.path.split("?", 1)[0], event.error)
            yield from self.handle_protocol_error(ResponseProtocolError(
                self.stream_id, f"upstream answer cut off: {event.error}",
                ErrorCode.GENERIC_SERVER_ERROR))
            return
        data = event.data if event.data is not None else b""
        if event.data is not None and not data:
            return  # an empty chunk mid-body: to a stream function b"" means the end
        try:
            if callable(response.stream):
                chunks = response.stream(data)
                chunks = [chunks] if isinstance(chunks, bytes) else chunks
            else:
                chunks = [data]
        except StreamAborted as exc:
            request = self.flow.request
            log.warning("upstream answer to %s %s cut off for the app: %s", request.method,
                        request.path.split("?", 1)[0], exc)
            body = pooled_body_of(self.flow)
            if body is not None:
                body.cancelled = True
            yield from self.handle_protocol_error(ResponseProtocolError(
                self.stream_id, f"upstream answer cut off: {exc}",
                ErrorCode.GENERIC_SERVER_ERROR))
            return
        for chunk in chunks:
            if chunk:
                yield SendHttp(ResponseData(self.stream_id, chunk), self.context.client)
        if event.data is None:
            response.timestamp_end = time.time()
            yield from original_send(self, already_streamed=True)  # response hook, the end

    def handle_protocol_error(self, event):  # type: ignore[no-untyped-def]
        body = pooled_body_of(self.flow)
        if body is None or not isinstance(event, RequestProtocolError):
            return (yield from original_error(self, event))
        # the app hung up on a pooled flow: there is no server connection to tell
        body.cancel()
        if self.server_state not in (self.state_done, self.state_errored):
            from mitmproxy import flow as mflow

            self.flow.error = mflow.Error(event.message)
            yield HttpErrorHook(self.flow)
        self.client_state = self.server_state = self.state_errored
        self.flow.live = False
        yield DropStream(self.stream_id)

    def layer_event(self, event):  # type: ignore[no-untyped-def]
        if isinstance(event, _Chunk):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                yield from self.event_to_child(stream, event)
            return
        yield from original_layer_event(self, event)

    send_response.tokenproxy_pooled_body = True  # type: ignore[attr-defined]
    HttpStream.send_response = send_response  # type: ignore[method-assign]
    HttpStream.state_pooled_body = state_pooled_body  # type: ignore[attr-defined]
    HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]
    HttpLayer._handle_event = layer_event  # type: ignore[method-assign]
    return True
