"""Where a :class:`~proxy_addon.tokens.failures.TokenUnavailable` (no token can be had for the
account now) becomes the app's answer, for :mod:`.inject` (waiting for a token) and
:mod:`.replay` (renewing after a token 401): the status, code and text come from
:mod:`.errors`; this adds how long the request waited.
"""

from __future__ import annotations

import time

from mitmproxy import http

from ..tokens.failures import TokenUnavailable
from . import errors


def refuse_unavailable(flow: http.HTTPFlow, exc: TokenUnavailable) -> None:
    """Answer for the platform when no token can be had; ``Server-Timing`` says how long the
    request waited for one since it arrived."""
    flow.response = errors.token_unavailable_response(exc)
    waited_ms = max(0.0, time.time() - flow.request.timestamp_start) * 1000
    flow.response.headers["Server-Timing"] = f"token-wait;dur={waited_ms:.0f}"


def unavailable_code(exc: TokenUnavailable) -> str:
    """The proxy error code of ``exc`` (``TPX-…``), as the log reports it."""
    return errors.token_unavailable_code(exc)
