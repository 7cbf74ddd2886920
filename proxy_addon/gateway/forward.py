"""Forward through the shared upstream pool (after :mod:`.inject`, before :mod:`.replay`).

``request``: every flow still unanswered leaves through the process's data plane
(:mod:`~proxy_addon.upstream.data_plane`) instead of a server connection of its own app
connection: one set of keep-alive TLS connections to the platform for every app, so an app that
opens a connection per request no longer costs a TCP and TLS handshake upstream each time. The
answer is set on the flow, so mitmproxy runs ``responseheaders`` and ``response`` as for any
answer (:mod:`.replay` and :mod:`.links` do not change); a large or unsized body streams
through :mod:`.pooled_body`.

Left to mitmproxy's own connection: streamed uploads (``flow.request.stream``: mitmproxy hands
their body out as it arrives, with no way to pause the app), ``Upgrade`` requests (WebSocket)
and ``CONNECT``. Refusals: a pool whose connections all stay busy → ``503 TPX-UPSTREAM-BUSY``
(``Retry-After``), no answer in time → ``504 TPX-UPSTREAM-TIMEOUT``, no connection →
``502 TPX-UPSTREAM-UNREACHABLE``. An app that hung up before its request left is not
forwarded (a POST nobody waits for must not go out).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from ..upstream.data_plane import DataPlane, PoolBusy, UpstreamTimeout
from ..upstream.forward import forward
from ..upstream.token_endpoint import UpstreamUnreachable
from . import errors
from .flow_context import client_gone
from .pooled_body import PooledBody, pooled_body_of

log = logging.getLogger("tokenproxy.forward")


class Forward:
    def __init__(self, plane: DataPlane, whole_limit: int, start_timeout: float) -> None:
        self._plane = plane
        self._whole_limit = whole_limit  # answers up to this are read whole (see .links)
        self._start_timeout = start_timeout

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None or not pooled(flow.request):
            return None
        return self._forward(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        body = pooled_body_of(flow)
        if body is not None:
            body.cancel()  # killed or failed before its body went out: stop reading upstream

    async def _forward(self, flow: http.HTTPFlow) -> None:
        if client_gone(flow):
            flow.kill()
            return
        request = flow.request
        try:
            forwarded = await forward(self._plane, request, self._whole_limit)
        except PoolBusy as exc:
            log.warning("%s %s refused: %s", request.method, request.path.split("?", 1)[0],
                        exc, extra={"event": "upstream_pool_busy"})
            flow.response = errors.error_response(
                503, errors.UPSTREAM_BUSY, f"The proxy's connections to the platform are all "
                f"busy: {exc}; retry shortly.", 1.0)
            return
        except UpstreamTimeout as exc:
            flow.response = errors.error_response(
                504, errors.UPSTREAM_TIMEOUT, f"The platform did not answer in time: {exc}")
            return
        except UpstreamUnreachable as exc:
            flow.response = errors.error_response(
                502, errors.UPSTREAM_UNREACHABLE, f"The platform is unreachable: {exc}")
            return
        if forwarded.body is not None:
            assert forwarded.answer is not None
            answer = forwarded.answer
            PooledBody(forwarded.body, lambda reuse: answer.release(reuse),
                       self._start_timeout).attach(flow)
        flow.response = forwarded.response


def pooled(request: http.Request) -> bool:
    """Whether this request can leave through the pool (else: mitmproxy's own connection)."""
    return not (request.stream or request.method == "CONNECT" or "upgrade" in request.headers)
