"""Refusals leave before the request body: a request the proxy refuses at its headers (unknown
client key, bad target, TLS required, an oversized login form …) is answered at once, and its
body is never read into memory.

mitmproxy answers a response that an addon sets in the ``requestheaders`` hook only after it has
read and buffered the whole request body (and it sends ``100 Continue`` first), so a 300 MB
upload with a bogus key costs 300 MB before the 401 goes out. :func:`install` wraps mitmproxy's
HTTP stream state for request headers (version-guarded, like :mod:`.master`'s error pages):
when the hook set a response and a body is still to come, the answer is sent right away with
``Connection: close`` and every further byte of that body is discarded as it arrives (never
buffered); the connection closes once the client stops sending or hangs up.

The addons' side of the contract (:mod:`.guard`, :mod:`.identify`) is
:func:`refuse_at_headers`.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

log = logging.getLogger("tokenproxy.early_answer")


def refuse_at_headers(flow: http.HTTPFlow, response: http.Response) -> None:
    """Answer ``flow`` from the ``requestheaders`` hook: no ``100 Continue``, no body read."""
    flow.response = response
    flow.request.stream = False  # mitmproxy cannot stream a request it answers itself
    flow.request.headers.pop("expect", None)  # no "100 Continue": we will not read the body


def has_body(request: http.Request) -> bool:
    """A body follows the request's headers (chunked, or a Content-Length other than 0)."""
    length = request.headers.get("content-length", "")
    return "chunked" in request.headers.get("transfer-encoding", "").lower() \
        or (length != "" and length != "0")


def install() -> bool:
    """Make answers set at request headers leave before the body; False if this mitmproxy
    version has no such state to wrap (then refusals still work, after reading the body)."""
    try:
        from mitmproxy.proxy.layers.http import (
            HttpResponseHeadersHook,
            HttpResponseHook,
            HttpStream,
            ResponseData,
            ResponseEndOfMessage,
            ResponseHeaders,
            SendHttp,
        )
    except ImportError:  # pragma: no cover - depends on the mitmproxy version
        log.warning("mitmproxy's HTTP layer changed: refused request bodies are read first")
        return False
    original = getattr(HttpStream, "state_wait_for_request_headers", None)
    if original is None or not hasattr(HttpStream, "state_consume_request_body") \
            or not hasattr(HttpStream, "state_errored"):  # pragma: no cover
        log.warning("mitmproxy's HTTP layer changed: refused request bodies are read first")
        return False
    if getattr(original, "tokenproxy_early_answer", False):
        return True

    def state_wait_for_request_headers(self, event):  # type: ignore[no-untyped-def]
        yield from original(self, event)
        flow = self.flow
        if flow is None or flow.response is None or event.end_stream \
                or self.client_state != self.state_consume_request_body:
            return
        response = flow.response
        response.headers["connection"] = "close"
        response.timestamp_start = time.time()
        # every further event of this request (its body) is dropped as it arrives
        self.client_state = self.state_errored
        yield HttpResponseHeadersHook(flow)
        response.timestamp_end = time.time()
        yield HttpResponseHook(flow)
        self.server_state = self.state_errored
        content = response.raw_content or b""
        yield SendHttp(ResponseHeaders(self.stream_id, response, not content),
                       self.context.client)
        if content:
            yield SendHttp(ResponseData(self.stream_id, content), self.context.client)
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)
        flow.live = False

    state_wait_for_request_headers.tokenproxy_early_answer = True  # type: ignore[attr-defined]
    HttpStream.state_wait_for_request_headers = state_wait_for_request_headers
    return True
