"""Small httpx helpers shared by the emulator's HTTP (and WebSocket) tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.emulator import Emulator

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
BASIC = ("demo-client-id", "demo-client-secret")
NOJWT = ("demo-nojwt-client", "demo-nojwt-secret")
EXT = "/restapi/v1.0/account/~/extension/~"
# the token endpoint's success body, fields in platform.md's order
TOKEN_FIELDS = [
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "refresh_token_expires_in",
    "scope",
    "owner_id",
    "endpoint_id",
    "session_id",
]
RATE_HEADERS = (
    "X-Rate-Limit-Group",
    "X-Rate-Limit-Limit",
    "X-Rate-Limit-Remaining",
    "X-Rate-Limit-Window",
)


def client(emu: Emulator) -> httpx.Client:
    return httpx.Client(base_url=emu.url, timeout=30.0, trust_env=False)


def token(c: httpx.Client, form: dict[str, str], auth: Any = BASIC, **kw: Any) -> httpx.Response:
    return c.post("/restapi/oauth/token", data=form, auth=auth, **kw)


def jwt_login(c: httpx.Client, assertion: str = "demo-jwt-credential", **extra: str) -> dict:
    response = token(c, {"grant_type": JWT_GRANT, "assertion": assertion, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def refresh(c: httpx.Client, refresh_token: str, auth: Any = BASIC) -> httpx.Response:
    return token(c, {"grant_type": "refresh_token", "refresh_token": refresh_token}, auth)


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def token_invalid(code: str, message: str) -> dict:
    return {
        "errorCode": "TokenInvalid",
        "message": message,
        "errors": [{"errorCode": code, "message": message}],
    }


def oauth_error(error: str, code: str, message: str) -> dict:
    return {
        "error": error,
        "error_description": message,
        "errors": [{"errorCode": code, "message": message}],
    }


def wstoken(c: httpx.Client, access_token: str) -> httpx.Response:
    """``POST /restapi/oauth/wstoken`` with the access token."""
    return c.post("/restapi/oauth/wstoken", headers=bearer(access_token))


def ws_url(body: dict, wsc: str | None = None) -> str:
    """The URL to connect to from a wstoken answer (and a wsc token to recover)."""
    url = f"{body['uri']}?access_token={body['ws_access_token']}"
    return url if wsc is None else f"{url}&wsc={wsc}"
