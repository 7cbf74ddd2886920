"""Answers the proxy gives on its own: JSON in the platform's error envelope.

Every refusal (unknown client, no token to be had, upstream unreachable) goes through
:func:`error_response`, so apps and their SDKs parse the proxy's errors exactly like the
platform's. ``errorCode`` values start with ``TPX-`` so they can never be mistaken for a
platform code (in particular, never for a replayable token error).
"""

from __future__ import annotations

import json
import math

from mitmproxy import http

CLIENT_UNKNOWN = "TPX-CLIENT-UNKNOWN"
OAUTH_MANAGED = "TPX-OAUTH-MANAGED"
UPSTREAM_UNREACHABLE = "TPX-UPSTREAM-UNREACHABLE"
PROXY_ERROR = "TPX-PROXY-ERROR"
BAD_TARGET = "TPX-BAD-REQUEST-TARGET"  # absolute-form for another host, dot-segments, ...
NOT_SERVED = "TPX-NOT-SERVED"  # a route the proxy never forwards (the emulator's admin)
BODY_REFUSED = "TPX-BODY-REFUSED"  # a login form too large or without a length
REPLAY_TOO_LARGE = "TPX-REPLAY-TOO-LARGE"  # a replay's answer beyond stream_threshold


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"errorCode": code, "message": message,
                       "errors": [{"errorCode": code, "message": message}]}).encode()


def platform_token_error(code: str, message: str) -> http.Response:
    """A 401 exactly as the platform answers a dead token (SDKs then refresh)."""
    body = json.dumps({"errorCode": "TokenInvalid", "message": message,
                       "errors": [{"errorCode": code, "message": message}]}).encode()
    return http.Response.make(401, body, {"Content-Type": "application/json"})


def error_response(status: int, code: str, message: str,
                   retry_after: float | None = None) -> http.Response:
    headers = {"Content-Type": "application/json", "X-Tokenproxy-Error": code}
    if retry_after is not None and math.isfinite(retry_after):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return http.Response.make(status, error_body(code, message), headers)
