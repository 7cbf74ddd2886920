"""Which upstream answers are token errors (refresh + replay) and which pass through."""

from __future__ import annotations

import json

import pytest

from proxy_addon.platform_errors import TokenEndpointError, token_error_code


def api_envelope(code: str, message: str = "m") -> bytes:
    return json.dumps({"errorCode": "TokenInvalid", "message": message,
                       "errors": [{"errorCode": code, "message": message}]}).encode()


OAUTH_EXPIRED = json.dumps({"error": "invalid_grant", "error_description": "Token expired",
                            "errors": [{"errorCode": "OAU-210", "message": "Token expired"}]
                            }).encode()


@pytest.mark.parametrize("code", ["OAU-213", "OAU-210", "OAU-128", "OAU-129"])
def test_token_errors_are_replayable(code: str) -> None:
    assert token_error_code(401, api_envelope(code)) == code


def test_oauth_envelope_expired_is_replayable() -> None:
    assert token_error_code(401, OAUTH_EXPIRED) == "OAU-210"


@pytest.mark.parametrize(("status", "body"), [
    (401, api_envelope("OAU-149")),  # garbage token: replaying cannot help
    (401, json.dumps({"errorCode": "AGW-401", "message": "no header"}).encode()),
    (401, b"not json"),
    (401, b""),
    (401, b"[1, 2]"),
    (403, api_envelope("OAU-213")),
    (200, api_envelope("OAU-213")),
])
def test_other_answers_pass_through(status: int, body: bytes) -> None:
    assert token_error_code(status, body) is None


def test_token_endpoint_error_parsing() -> None:
    body = json.dumps({"error": "invalid_client", "error_description": "Invalid client: x",
                       "errors": [{"errorCode": "OAU-153", "message": "Invalid client: x"}]})
    error = TokenEndpointError.from_response(400, body.encode(), None)
    assert (error.error, error.code) == ("invalid_client", "OAU-153")
    assert "sandbox" in error.hint
    limited = TokenEndpointError.from_response(429, b'{"errorCode":"CMN-301"}', "60")
    assert limited.rate_limited and limited.retry_after == 60
    assert TokenEndpointError.from_response(429, b"", "soon").retry_after is None
