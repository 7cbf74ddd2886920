"""The request's OpenTelemetry span (issue 19, item 5), with ``[tracing]`` only, right after
:mod:`.request_id`; its :class:`RequestSpanEnd` half is the gateway's last addon.

``requestheaders``: a SERVER span starts, its parent the app's ``traceparent`` (already
checked by :mod:`.request_id`), and the ``traceparent`` sent upstream becomes the proxy's span:
the platform's call is its child. In every hook the span is made current for the addons
after this one, so a renewal a request starts (:mod:`proxy_addon.tokens.renewal`, in a task
created from that hook) is its child, and the renewal's token call the renewal's; mitmproxy
runs each hook of a flow in a task of its own, and :class:`RequestSpanEnd` detaches it again
at the end of the chain. ``response``/``error`` (the proxy's own answers and an app that hung
up included): the span gets the status, the path as a template (ids folded, no query, as
:mod:`.audit` writes it), client, account, request id, whether it was replayed, and ends.
Never a header value, a token or a body.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from ..ops.tracing import extract, inject
from ..ratelimit.groups import fold
from .flow_context import context_of
from .request_id import request_id_of

MAX_TEMPLATE = 256
SPAN = "tokenproxy.span"  # flow.metadata: the request's span
_ATTACHED = "tokenproxy.span_token"  # flow.metadata: this hook's context token
_tracer = trace.get_tracer("tokenproxy.gateway")


class RequestSpan:
    """Starts the request's span and makes it current in each hook (see the module)."""

    def __init__(self) -> None:
        self.end = RequestSpanEnd()  # the gateway puts it last

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        headers = request.headers
        parent = extract(headers) if "traceparent" in headers else None
        span = _tracer.start_span(
            request.method[:16], context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method[:16],
                        "tokenproxy.request_id": request_id_of(flow)})
        flow.metadata[SPAN] = span
        headers.pop("tracestate", None)
        carrier: dict[str, str] = {}
        inject(carrier, trace.set_span_in_context(span))
        for name, value in carrier.items():  # the platform's call is the proxy span's child
            headers[name] = value
        self._attach(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._attach(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._attach(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._attach(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._attach(flow)

    @staticmethod
    def _attach(flow: http.HTTPFlow) -> None:
        span = flow.metadata.get(SPAN)
        if span is not None:
            token = otel_context.attach(trace.set_span_in_context(span))
            flow.metadata[_ATTACHED] = (_task(), token)


class RequestSpanEnd:
    """The last addon: detaches the span each hook attached; ends it at the answer."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        _detach(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        _detach(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _detach(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        _detach(flow)
        _finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        _detach(flow)
        _finish(flow)


def _detach(flow: http.HTTPFlow) -> None:
    attached = flow.metadata.pop(_ATTACHED, None)
    # a token of another hook's task (an addon between the two halves raised there) belongs
    # to a context that is gone already: nothing to undo
    if attached is not None and attached[0] is _task():
        otel_context.detach(attached[1])


def _task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: called outside mitmproxy (a sync test)
        return None


def _finish(flow: http.HTTPFlow) -> None:
    span = flow.metadata.pop(SPAN, None)
    if span is None:
        return
    if span.is_recording():
        request, response = flow.request, flow.response
        template = fold(request.path.split("?", 1)[0])[:MAX_TEMPLATE]
        context = context_of(flow)
        client = context.client if context is not None else None
        span.update_name(f"{request.method[:16]} {template}")
        span.set_attribute("url.path", template)
        if client is not None:
            span.set_attribute("tokenproxy.client", client.name)
            span.set_attribute("tokenproxy.account", client.account)
        span.set_attribute("tokenproxy.replayed", bool(context is not None and context.replayed))
        if response is not None:
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(StatusCode.ERROR)
        else:
            span.set_attribute("error.type", "disconnected")
            span.set_status(StatusCode.ERROR,
                            "the app or the platform hung up before the answer")
    span.end()
