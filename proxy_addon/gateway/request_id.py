"""Request ids and trace context (issue 19, item 5), right after :mod:`.in_flight`.

``requestheaders``: the app's ``X-Request-Id`` is kept when it is a sane id (1-128 letters,
digits, ``.``, ``_``, ``:``, ``-``), else one is generated; it goes upstream with the request and
back on the answer (the proxy's own refusals included), and names the request in the audit
line (:mod:`.audit`). A W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``, not all zeros) is
propagated as the app sent it (with ``[tracing]``, :mod:`.request_span` then makes it the
proxy's own span, the app's as its parent); a malformed one is dropped rather than forwarded,
with its ``tracestate``.
"""

from __future__ import annotations

import re
import uuid

from mitmproxy import http

KEY = "tokenproxy.request_id"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


class RequestId:
    def __init__(self) -> None:
        # the gateway puts it last, so an answer that replaced the platform's in ``response``
        # (a replay after a token 401, a resend after a 429) carries the id too
        self.end = RequestIdEnd()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        given = headers.get("x-request-id", "")
        request_id = given if _ID.fullmatch(given) else uuid.uuid4().hex
        flow.metadata[KEY] = request_id
        headers["x-request-id"] = request_id
        parent = headers.get("traceparent")
        if parent is not None and not _TRACEPARENT.fullmatch(parent.strip()):
            headers.pop("traceparent", None)
            headers.pop("tracestate", None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _stamp(flow)  # a streamed answer's headers leave after this hook


class RequestIdEnd:
    """The last addon: the final answer carries the request id."""

    def response(self, flow: http.HTTPFlow) -> None:
        _stamp(flow)


def _stamp(flow: http.HTTPFlow) -> None:
    request_id = flow.metadata.get(KEY)
    if request_id and flow.response is not None:
        flow.response.headers["x-request-id"] = request_id


def request_id_of(flow: http.HTTPFlow) -> str:
    return str(flow.metadata.get(KEY, ""))
