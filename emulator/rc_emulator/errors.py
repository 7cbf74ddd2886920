"""Builders for every error body the emulator answers (shapes from platform.md).

Three envelopes:

* OAuth (token, revoke, authorize endpoints; status 400)::

    {"error": E, "error_description": M, "errors": [{"errorCode": C, "message": M}]}

* API token errors (status 401)::

    {"errorCode": "TokenInvalid", "message": M, "errors": [{"errorCode": C, "message": M}]}

  or, for an expired token under ``expired_envelope=oauth``, the OAuth envelope above with
  ``error="invalid_grant"``; a missing header gets ``{"errorCode": "AGW-401", "message": ...}``.

* Generic API errors (404, 400, 429...)::

    {"errorCode": C, "message": M, "errors": [{"errorCode": C, "message": M}]}

Codes the real platform documents are used as-is (OAU-140/149/153/210/211/213/128/129/251,
AGW-401, CMN-301/302/310: ringcentral-api-docs ``docs/basics/errors.md``). Codes the emulator had
to choose itself (the platform's exact ones are unknown) are:

* ``OAU-101`` invalid_request  "Parameter [X] is not specified"
* ``OAU-102`` invalid_request  "Parameter [X] value is invalid" / body not a form / too large
* ``OAU-250`` unsupported_grant_type / unsupported_response_type
* ``OAU-260`` invalid_grant  session cap reached under ``session_cap_policy=refuse``
* ``OAU-261`` invalid_grant  authorization code bound to another client or redirect_uri
* ``OAU-262`` invalid_grant  PKCE code_verifier missing or not matching the challenge
* ``CMN-101`` 400  invalid API request parameter or body
* ``CMN-102`` 404  unknown API resource / path
* ``CMN-405`` 405  method not allowed
* ``CMN-500`` 500  should never happen (safety net)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ratelimit import format_retry_after

Body = dict[str, Any]

# Messages of the documented codes.
MSG_INVALID_CLIENT = "Invalid client: {}"
MSG_BAD_CREDENTIALS = "Invalid resource owner credentials"
MSG_UNAUTHORIZED_CLIENT = "Unauthorized for this grant type"
MSG_TOKEN_REVOKED = "Token revoked"
MSG_TOKEN_EXPIRED = "Token expired"
MSG_ACCESS_TOKEN_EXPIRED = "Access token expired"
MSG_TOKEN_CORRUPTED = "Access token corrupted"
MSG_TOKEN_NOT_FOUND = "Token not found"
MSG_UNPARSABLE = "Unparsable access token"
MSG_NO_AUTH_HEADER = "Authorization header is not specified"
MSG_RATE = "Request rate exceeded"
MSG_GLOBAL_RATE = "Global request rate exceeded"
MSG_SESSION_CAP = "Maximum number of active sessions reached for this user and application"

EXPIRED_MESSAGES = {"OAU-210": MSG_TOKEN_EXPIRED, "OAU-128": MSG_ACCESS_TOKEN_EXPIRED}


@dataclass
class PlatformError(Exception):
    """An error answer: HTTP status, JSON body, the inner error code (for counters)."""

    status: int
    body: Body
    code: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}"


def oauth_body(error: str, code: str, message: str) -> Body:
    return {
        "error": error,
        "error_description": message,
        "errors": [{"errorCode": code, "message": message}],
    }


def oauth_error(error: str, code: str, message: str, status: int = 400) -> PlatformError:
    return PlatformError(status, oauth_body(error, code, message), code)


def invalid_client(reason: str) -> PlatformError:
    return oauth_error("invalid_client", "OAU-153", MSG_INVALID_CLIENT.format(reason))


def bad_credentials() -> PlatformError:
    return oauth_error("invalid_grant", "OAU-140", MSG_BAD_CREDENTIALS)


def unauthorized_client() -> PlatformError:
    return oauth_error("unauthorized_client", "OAU-251", MSG_UNAUTHORIZED_CLIENT)


def grant_revoked() -> PlatformError:
    return oauth_error("invalid_grant", "OAU-211", MSG_TOKEN_REVOKED)


def grant_not_found() -> PlatformError:
    return oauth_error("invalid_grant", "OAU-213", MSG_TOKEN_NOT_FOUND)


def grant_expired() -> PlatformError:
    return oauth_error("invalid_grant", "OAU-210", MSG_TOKEN_EXPIRED)


def missing_param(name: str) -> PlatformError:
    return oauth_error("invalid_request", "OAU-101", f"Parameter [{name}] is not specified")


def invalid_param(name: str) -> PlatformError:
    return oauth_error("invalid_request", "OAU-102", f"Parameter [{name}] value is invalid")


def invalid_request(message: str) -> PlatformError:
    return oauth_error("invalid_request", "OAU-102", message)


def unsupported_grant_type() -> PlatformError:
    return oauth_error("unsupported_grant_type", "OAU-250", "Unsupported grant type")


def unsupported_response_type() -> PlatformError:
    return oauth_error("unsupported_response_type", "OAU-250", "Unsupported response type")


def session_cap_refused() -> PlatformError:
    return oauth_error("invalid_grant", "OAU-260", MSG_SESSION_CAP)


def code_mismatch(message: str) -> PlatformError:
    return oauth_error("invalid_grant", "OAU-261", message)


def pkce_failed(message: str) -> PlatformError:
    return oauth_error("invalid_grant", "OAU-262", message)


def generic_body(code: str, message: str) -> Body:
    return {
        "errorCode": code,
        "message": message,
        "errors": [{"errorCode": code, "message": message}],
    }


def rate_limited(retry_after: float) -> PlatformError:
    seconds = max(1, int(-(-retry_after // 1)))
    return PlatformError(
        429, generic_body("CMN-301", MSG_RATE), "CMN-301", {"Retry-After": str(seconds)}
    )


def api_rate_limited(code: str, retry_after: float | None) -> PlatformError:
    """429 of an API (or injected) rate limit: CMN-301/302 "Request rate exceeded", CMN-310
    "Global request rate exceeded"; ``Retry-After`` in whole seconds rounded up, or absent when
    ``retry_after`` is None (clients then wait at least 30 s: errors.md)."""
    message = MSG_GLOBAL_RATE if code == "CMN-310" else MSG_RATE
    headers = {} if retry_after is None else {"Retry-After": format_retry_after(retry_after)}
    return PlatformError(429, generic_body(code, message), code, headers)


def token_invalid(code: str, message: str) -> PlatformError:
    body: Body = {
        "errorCode": "TokenInvalid",
        "message": message,
        "errors": [{"errorCode": code, "message": message}],
    }
    return PlatformError(401, body, code)


def missing_auth_header() -> PlatformError:
    return PlatformError(401, {"errorCode": "AGW-401", "message": MSG_NO_AUTH_HEADER}, "AGW-401")


def access_expired(code: str, envelope: str) -> PlatformError:
    """401 for an expired access token; ``envelope`` is ``api`` or ``oauth``."""
    message = EXPIRED_MESSAGES[code]
    if envelope == "oauth":
        return PlatformError(401, oauth_body("invalid_grant", code, message), code)
    return token_invalid(code, message)


def access_rotated() -> PlatformError:
    return token_invalid("OAU-129", MSG_TOKEN_CORRUPTED)


def access_not_found() -> PlatformError:
    return token_invalid("OAU-213", MSG_TOKEN_NOT_FOUND)


def access_unparsable() -> PlatformError:
    return token_invalid("OAU-149", MSG_UNPARSABLE)


def api_error(status: int, code: str, message: str) -> PlatformError:
    return PlatformError(status, generic_body(code, message), code)


def not_found(what: str = "Resource") -> PlatformError:
    return api_error(404, "CMN-102", f"{what} not found")


def bad_api_param(name: str) -> PlatformError:
    return api_error(400, "CMN-101", f"Parameter [{name}] value is invalid")
