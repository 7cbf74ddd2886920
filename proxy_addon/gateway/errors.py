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

from ..tokens.failures import Reason, TokenUnavailable

CLIENT_UNKNOWN = "TPX-CLIENT-UNKNOWN"
OAUTH_MANAGED = "TPX-OAUTH-MANAGED"
UPSTREAM_UNREACHABLE = "TPX-UPSTREAM-UNREACHABLE"
UPSTREAM_BUSY = "TPX-UPSTREAM-BUSY"  # every pooled connection to the platform stayed busy
UPSTREAM_TIMEOUT = "TPX-UPSTREAM-TIMEOUT"  # the platform took the request, never answered
PROXY_ERROR = "TPX-PROXY-ERROR"
BAD_TARGET = "TPX-BAD-REQUEST-TARGET"  # absolute-form for another host, dot-segments, ...
NOT_SERVED = "TPX-NOT-SERVED"  # a route the proxy never forwards (the emulator's admin)
BODY_REFUSED = "TPX-BODY-REFUSED"  # a login form too large or without a length
REPLAY_TOO_LARGE = "TPX-REPLAY-TOO-LARGE"  # a replay's answer beyond stream_threshold
# the account's API budget for the request's group stayed used up (or in a platform penalty)
# for [rate_limits] max_wait: the proxy's own 429, in the platform's CMN-301 envelope
RATE_LIMITED = "TPX-RATE-LIMITED"
SCOPE_DENIED = "TPX-SCOPE-DENIED"  # outside the client's [[clients]] allow list


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


# -- the token core's refusals (proxy_addon.tokens.failures), as the app is told them --------

_TOKEN_UNAVAILABLE: dict[Reason, tuple[int, str]] = {
    Reason.REAUTH_REQUIRED: (503, "TPX-REAUTH-REQUIRED"),
    Reason.BUDGET_EXHAUSTED: (503, "TPX-AUTH-RATE-LIMITED"),
    Reason.RATE_LIMITED: (503, "TPX-AUTH-RATE-LIMITED"),
    Reason.MISCONFIGURED: (503, "TPX-ACCOUNT-MISCONFIGURED"),
    Reason.ENDPOINT_FAILED: (502, "TPX-TOKEN-ENDPOINT-FAILED"),
    Reason.UPSTREAM_UNREACHABLE: (502, UPSTREAM_UNREACHABLE),
    Reason.STORE_UNREACHABLE: (503, "TPX-STORE-UNAVAILABLE"),
    Reason.STORE_NOT_ANSWERING: (503, "TPX-STORE-UNAVAILABLE"),
    Reason.LOCK_HELD: (503, "TPX-TOKEN-TIMEOUT"),
    Reason.TIMEOUT: (503, "TPX-TOKEN-TIMEOUT"),
    Reason.NO_TOKEN: (503, "TPX-TOKEN-UNAVAILABLE"),
}


def token_unavailable_code(exc: TokenUnavailable) -> str:
    """The ``TPX-*`` error code an app is told when no token can be had."""
    return _TOKEN_UNAVAILABLE[exc.reason][1]


def token_unavailable_message(exc: TokenUnavailable) -> str:
    reason, account = exc.reason, exc.account
    if reason is Reason.REAUTH_REQUIRED:
        return exc.hint
    if reason is Reason.BUDGET_EXHAUSTED:
        return ("The proxy has used this app's budget of token calls; it will renew the token "
                "when the budget allows.")
    if reason is Reason.RATE_LIMITED:
        return ("The platform's token endpoint is rate limiting this app; the proxy is "
                "backing off.")
    if reason is Reason.MISCONFIGURED:
        return f"The platform refused account {account!r}'s credentials ({exc.detail}): {exc.hint}"
    if reason is Reason.ENDPOINT_FAILED:
        return f"The platform's token endpoint failed ({exc.detail})."
    if reason is Reason.UPSTREAM_UNREACHABLE:
        return f"The platform is unreachable: {exc.detail}"
    if reason is Reason.STORE_UNREACHABLE:
        return ("The token store is unreachable and the current token is no longer valid; the "
                "proxy renews tokens only where it can save them.")
    if reason is Reason.STORE_NOT_ANSWERING:
        return ("The token store is not answering and the current token is no longer valid; "
                "the proxy renews tokens only where it can save them.")
    if reason is Reason.LOCK_HELD:
        return "Another proxy process holds this account's renewal lock and has not finished."
    if reason is Reason.TIMEOUT:
        return (f"Timed out after {exc.waited or 0.0:g} s waiting for a token for account "
                f"{account!r}.")
    return "No token is available for this account."


def token_unavailable_response(exc: TokenUnavailable) -> http.Response:
    """The answer to a request for which the token core has no token (status, ``TPX-*`` code,
    message and Retry-After as the app is told them)."""
    status, code = _TOKEN_UNAVAILABLE[exc.reason]
    return error_response(status, code, token_unavailable_message(exc), exc.retry_after)
