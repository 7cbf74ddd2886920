"""The one place where a :class:`~proxy_addon.tokens.pool.TokenUnavailable` (no token can be had
for the account now) becomes the app's answer, for :mod:`.inject` (waiting for a token) and
:mod:`.replay` (renewing after a token 401), and the one place its code is read for the log.
"""

from __future__ import annotations

import time

from mitmproxy import http

from ..tokens.pool import TokenUnavailable
from . import errors as proxy_errors


def refuse_unavailable(flow: http.HTTPFlow, exc: TokenUnavailable) -> None:
    """Answer for the platform when no token can be had; ``Server-Timing`` says how long the
    request waited for one since it arrived."""
    flow.response = proxy_errors.error_response(exc.status, exc.code, exc.message,
                                                exc.retry_after)
    waited_ms = max(0.0, time.time() - flow.request.timestamp_start) * 1000
    flow.response.headers["Server-Timing"] = f"token-wait;dur={waited_ms:.0f}"


def unavailable_code(exc: TokenUnavailable) -> str:
    """The proxy error code of ``exc`` (``TPX-…``), as the log reports it."""
    return exc.code
