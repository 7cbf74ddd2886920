"""Login interception: an app calling ``/restapi/oauth/token`` or ``/restapi/oauth/revoke`` on the
proxy is answered here, in the platform's exact shapes, and never reaches the platform.

The app's client id/secret and credentials (JWT assertion, or username/extension/password) are
compared in constant time with a configured account's; a match gets a virtual token pair
(:mod:`proxy_addon.virtual_tokens`) mapped to that account. Wrong credentials get the
platform's own error bodies (OAU-153, OAU-140, OAU-211, ...). The real session stays the
pool's: logins through the proxy never add platform sessions or token calls.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Mapping

from mitmproxy import http

from .config import AccountConfig, Config
from .oauth import JWT_GRANT, TokenEndpoint, UpstreamUnreachable
from .platform_errors import TokenEndpointError
from .pool import TokenPool, TokenUnavailable
from .proxy_errors import error_response
from .store import StoreError
from .virtual_tokens import IssuedPair, VirtualTokens

log = logging.getLogger("tokenproxy.login")

TOKEN_PATH = "/restapi/oauth/token"
REVOKE_PATH = "/restapi/oauth/revoke"
AUTHORIZE_PATH = "/restapi/oauth/authorize"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def oauth_error(code: str, error: str, message: str, status: int = 400) -> http.Response:
    body = json.dumps({"error": error, "error_description": message,
                       "errors": [{"errorCode": code, "message": message}]}).encode()
    return http.Response.make(status, body, {"Content-Type": "application/json", **NO_STORE})


def _same(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison (False when either side is missing)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


class LoginInterceptor:
    def __init__(self, config: Config, pool: TokenPool, virtual: VirtualTokens,
                 endpoint: TokenEndpoint | None = None) -> None:
        self._pool = pool
        self._endpoint = endpoint
        self._upstream = config.proxy.upstream
        self._virtual = virtual
        self._by_client: dict[str, list[AccountConfig]] = {}
        for account in config.accounts:
            self._by_client.setdefault(account.client_id, []).append(account)

    @staticmethod
    def handles(path: str) -> bool:
        return path.split("?", 1)[0] in (TOKEN_PATH, REVOKE_PATH, AUTHORIZE_PATH)

    async def answer(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        path = request.path.split("?", 1)[0]
        if path == AUTHORIZE_PATH and request.method == "GET":
            # the browser part of the authorization-code flow is the platform's own page
            flow.response = http.Response.make(
                302, b"", {"Location": self._upstream + request.path, **NO_STORE})
            return
        if request.method != "POST":
            flow.response = oauth_error("OAU-102", "invalid_request",
                                        f"{request.method} is not supported here", 405)
            return
        try:
            form: Mapping[str, str] = request.urlencoded_form
            if path == TOKEN_PATH:
                flow.response = await self._token(request, form)
            else:
                flow.response = await self._revoke(request, form)
        except StoreError as exc:
            log.error("login interception: the store is unreachable: %s", exc)
            flow.response = error_response(503, "TPX-STORE-UNAVAILABLE",
                                           "The token store is unreachable; try again shortly.",
                                           1.0)

    def _client(self, request: http.Request,
                form: Mapping[str, str]) -> tuple[str, list[AccountConfig]] | http.Response:
        pair = _basic(request.headers.get("authorization"))
        client_id, secret = pair if pair else (form.get("client_id", ""), "")
        if not client_id:
            return oauth_error("OAU-153", "invalid_client",
                               "Invalid client: client credentials are not specified", 401)
        candidates = [a for a in self._by_client.get(client_id, [])
                      if (a.client_secret is None and not secret)
                      or (a.client_secret is not None and _same(secret, a.client_secret.reveal()))]
        if not candidates:
            return oauth_error("OAU-153", "invalid_client", "Invalid client: " + client_id, 401)
        return client_id, candidates

    async def _token(self, request: http.Request, form: Mapping[str, str]) -> http.Response:
        client = self._client(request, form)
        if isinstance(client, http.Response):
            return client
        client_id, candidates = client
        grant = form.get("grant_type", "")
        if not grant:
            return oauth_error("OAU-101", "invalid_request",
                               "Parameter [grant_type] is not specified")
        if grant == "refresh_token":
            rotated = await self._virtual.rotate(form.get("refresh_token", ""), client_id)
            if rotated is None:
                return oauth_error("OAU-211", "invalid_grant", "Token revoked")
            account_name, pair = rotated
            return await self._issued(account_name, pair)
        if grant == "authorization_code":
            return await self._code(candidates, client_id, form)
        account = next((a for a in candidates if _matches(a, grant, form)), None)
        if grant not in (JWT_GRANT, "password"):
            return oauth_error("OAU-250", "unsupported_grant_type",
                               "Unsupported grant type")
        if account is None:
            log.warning("login through the proxy refused for client %s (%s grant): "
                        "credentials do not match a configured account", client_id,
                        "jwt" if grant == JWT_GRANT else grant,
                        extra={"event": "login_refused"})
            return oauth_error("OAU-140", "invalid_grant", "Invalid resource owner credentials")
        pair = await self._virtual.issue(account.name, client_id)
        return await self._issued(account.name, pair)

    async def _code(self, candidates: list[AccountConfig], client_id: str,
                    form: Mapping[str, str]) -> http.Response:
        """An app's authorization-code login: the code came from the platform's own page, so
        only the platform can check it. The proxy exchanges it (a person really logged in),
        maps the user to a configured account of this app and gives the app virtual tokens.
        The platform session the exchange created becomes the account's if the account needs
        one (it was waiting for a person); otherwise it is revoked at once, so the account
        still holds one session."""
        code, redirect_uri = form.get("code", ""), form.get("redirect_uri", "")
        if not code or not redirect_uri or self._endpoint is None:
            return oauth_error("OAU-101", "invalid_request",
                               "Parameter [code] or [redirect_uri] is not specified")
        try:
            tokens = await self._endpoint.exchange_code(candidates[0], code, redirect_uri,
                                                        form.get("code_verifier") or None)
        except TokenEndpointError as exc:
            return oauth_error(exc.code or "OAU-140", exc.error or "invalid_grant",
                               exc.description or "Invalid authorization code")
        except UpstreamUnreachable as exc:
            return error_response(502, "TPX-UPSTREAM-UNREACHABLE",
                                  f"The platform is unreachable: {exc}")
        pool = self._pool
        owners: dict[str, str] = {}
        for candidate in candidates:  # which platform user is each account?
            owner = pool[candidate.name].known_owner()
            if not owner and candidate.can_login:
                try:
                    owner = await pool[candidate.name].owner_id()  # first use: logs in
                except TokenUnavailable:
                    owner = ""
            owners[candidate.name] = owner
        matching = [a for a in candidates if owners[a.name] == tokens.owner_id]
        waiting = [a for a in candidates if not a.can_login  # needs a person to log in
                   and pool[a.name].needs_session()
                   and owners[a.name] in ("", tokens.owner_id)]
        account = (matching or waiting or [None])[0]
        adopted = False
        if account is not None and account in waiting:
            adopted = await pool[account.name].authorized(tokens)
        if not adopted:
            await self._revoke_upstream(candidates[0], tokens.refresh_token
                                        or tokens.access_token)
        if account is None:
            return oauth_error("OAU-140", "invalid_grant", "Invalid resource owner credentials")
        pair = await self._virtual.issue(account.name, client_id)
        return await self._issued(account.name, pair)

    async def _revoke_upstream(self, account: AccountConfig, token: str) -> None:
        assert self._endpoint is not None
        try:
            await self._endpoint.revoke(account, token)
        except (TokenEndpointError, UpstreamUnreachable) as exc:
            log.warning("could not revoke the session an app's code login created: %s", exc)

    async def _issued(self, account_name: str, pair: IssuedPair) -> http.Response:
        tokens = self._pool[account_name]
        try:
            owner_id = await tokens.owner_id()
        except TokenUnavailable:
            owner_id = ""
        body = {
            "access_token": pair.access_token, "token_type": "bearer",
            "expires_in": pair.access_expires_in, "refresh_token": pair.refresh_token,
            "refresh_token_expires_in": pair.refresh_expires_in, "scope": tokens.scope(),
            "owner_id": owner_id, "endpoint_id": "tokenproxy",
            "session_id": "tokenproxy-" + account_name,
        }
        return http.Response.make(200, json.dumps(body).encode(),
                                  {"Content-Type": "application/json", **NO_STORE})

    async def _revoke(self, request: http.Request, form: Mapping[str, str]) -> http.Response:
        token = form.get("token", "")
        if not token:
            return oauth_error("OAU-101", "invalid_request", "Parameter [token] is not specified")
        await self._virtual.revoke(token)  # only ever a virtual pair; real tokens stay put
        return http.Response.make(200, b"", NO_STORE)


def _matches(account: AccountConfig, grant: str, form: Mapping[str, str]) -> bool:
    if grant == JWT_GRANT:
        return account.jwt is not None and _same(form.get("assertion"), account.jwt.reveal())
    if grant == "password":
        if account.password is None or account.username is None:
            return False
        username, extension = form.get("username", ""), form.get("extension", "")
        if not extension and "*" in username:  # "phone*extension", as the JS SDK sends it
            username, _, extension = username.partition("*")
        extension_ok = (not extension or not account.extension
                        or _same(extension, account.extension))
        return (_same(username, account.username) and extension_ok
                and _same(form.get("password"), account.password.reveal()))
    return False
