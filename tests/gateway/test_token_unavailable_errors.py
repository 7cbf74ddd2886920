"""The gateway's answer for each reason the token core gives no token: status, TPX code,
message and Retry-After exactly as apps were told them when the pool built its own."""

from __future__ import annotations

import json
import math

import pytest

from proxy_addon.gateway.errors import token_unavailable_code, token_unavailable_response
from proxy_addon.tokens.failures import Reason, TokenUnavailable

CASES = [
    (TokenUnavailable(Reason.REAUTH_REQUIRED, "main", "refresh token dead",
                      hint="a person must authorize it again"),
     503, "TPX-REAUTH-REQUIRED", "a person must authorize it again", None),
    (TokenUnavailable(Reason.BUDGET_EXHAUSTED, "main", retry_after=12.2),
     503, "TPX-AUTH-RATE-LIMITED", "The proxy has used this app's budget of token calls; it "
     "will renew the token when the budget allows.", "13"),
    (TokenUnavailable(Reason.RATE_LIMITED, "main", "CMN-301", retry_after=45.0),
     503, "TPX-AUTH-RATE-LIMITED", "The platform's token endpoint is rate limiting this app; "
     "the proxy is backing off.", "45"),
    (TokenUnavailable(Reason.MISCONFIGURED, "main", "OAU-153", hint="check the id",
                      retry_after=30.0),
     503, "TPX-ACCOUNT-MISCONFIGURED",
     "The platform refused account 'main''s credentials (OAU-153): check the id", "30"),
    (TokenUnavailable(Reason.ENDPOINT_FAILED, "main", "HTTP 503", retry_after=0.2),
     502, "TPX-TOKEN-ENDPOINT-FAILED", "The platform's token endpoint failed (HTTP 503).", "1"),
    (TokenUnavailable(Reason.UPSTREAM_UNREACHABLE, "main", "cannot reach x", retry_after=1.0),
     502, "TPX-UPSTREAM-UNREACHABLE", "The platform is unreachable: cannot reach x", "1"),
    (TokenUnavailable(Reason.STORE_UNREACHABLE, "main", "down", retry_after=1.0),
     503, "TPX-STORE-UNAVAILABLE", "The token store is unreachable and the current token is "
     "no longer valid; the proxy renews tokens only where it can save them.", "1"),
    (TokenUnavailable(Reason.STORE_NOT_ANSWERING, "main", retry_after=1.0),
     503, "TPX-STORE-UNAVAILABLE", "The token store is not answering and the current token "
     "is no longer valid; the proxy renews tokens only where it can save them.", "1"),
    (TokenUnavailable(Reason.LOCK_HELD, "main", retry_after=1.0),
     503, "TPX-TOKEN-TIMEOUT", "Another proxy process holds this account's renewal lock and "
     "has not finished.", "1"),
    (TokenUnavailable(Reason.TIMEOUT, "main", retry_after=1.0, waited=2.5),
     503, "TPX-TOKEN-TIMEOUT", "Timed out after 2.5 s waiting for a token for account 'main'.",
     "1"),
    (TokenUnavailable(Reason.NO_TOKEN, "main"),
     503, "TPX-TOKEN-UNAVAILABLE", "No token is available for this account.", None),
]


@pytest.mark.parametrize(("exc", "status", "code", "message", "retry_after"), CASES,
                         ids=[c[0].reason.value for c in CASES])
def test_each_reason_is_answered_as_before(exc: TokenUnavailable, status: int, code: str,
                                           message: str, retry_after: str | None) -> None:
    response = token_unavailable_response(exc)
    assert token_unavailable_code(exc) == code
    assert response.status_code == status
    assert response.headers["X-Tokenproxy-Error"] == code
    assert response.headers.get("Retry-After") == retry_after
    body = json.loads(response.content or b"")
    assert (body["errorCode"], body["message"]) == (code, message)
    assert body["errors"] == [{"errorCode": code, "message": message}]


def test_every_reason_has_an_answer() -> None:
    assert {c[0].reason for c in CASES} == set(Reason)
    infinite = TokenUnavailable(Reason.REAUTH_REQUIRED, "main", hint="h", retry_after=math.inf)
    assert "Retry-After" not in token_unavailable_response(infinite).headers
