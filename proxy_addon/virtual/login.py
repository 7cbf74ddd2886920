"""Login interception: an app calling ``/restapi/oauth/token`` or ``/restapi/oauth/revoke`` on the
proxy is answered here, in the platform's exact shapes, and never reaches the platform.

The app's client id/secret and credentials (JWT assertion, or username/extension/password) are
compared in constant time with a configured account's; a match gets a virtual token pair
(:mod:`proxy_addon.virtual.grants`) mapped to that account. The real session stays the
pool's: logins through the proxy never add platform sessions or token calls.

Against guessing: every failed login, refresh or revoke is counted by the shared
:class:`~proxy_addon.gateway.throttle.BadKeyThrottle`
per source address and per configured client id;
beyond the limits logins get the platform's 429 CMN-301 without any credential being checked
(refreshes are only limited per address: their tokens cannot be guessed, and apps already in
must not be locked out by someone else's guessing). A failed login is answered alike whatever
was wrong — unknown client id, wrong client secret, wrong user credentials — so nobody learns
which half was right; the precise reason goes to the log. A public client (no secret
configured) has no secret to prove: anyone knowing its client id may try its accounts'
credentials, and only the throttle stands in the way (prefer confidential clients).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
from collections.abc import Mapping

from mitmproxy import http

from ..config import AccountConfig, Config
from ..gateway.errors import error_response
from ..gateway.throttle import BadKeyThrottle
from ..store import StoreError
from ..tokens.failures import TokenUnavailable
from ..tokens.pool import TokenPool
from ..upstream.platform_errors import TokenEndpointError
from ..upstream.token_endpoint import JWT_GRANT, TokenEndpoint, UpstreamUnreachable
from .grants import IssuedPair, VirtualTokens

log = logging.getLogger("tokenproxy.login")

TOKEN_PATH = "/restapi/oauth/token"
REVOKE_PATH = "/restapi/oauth/revoke"
AUTHORIZE_PATH = "/restapi/oauth/authorize"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SESSION_PREFIX = "tokenproxy-"  # session_id of a virtual login: the prefix and the account
LOGIN_FAILED = ("OAU-140", "invalid_grant", "Invalid client or resource owner credentials")
REFRESH_FAILED = ("OAU-211", "invalid_grant", "Token revoked")


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
                 endpoint: TokenEndpoint | None = None,
                 throttle: BadKeyThrottle | None = None) -> None:
        self._pool = pool
        self._endpoint = endpoint
        self._upstream = config.proxy.upstream
        self._virtual = virtual
        virtual.access_ttl = config.proxy.virtual_access_ttl
        virtual.stale_max = config.proxy.virtual_grant_stale_max  # served while the store is away
        # at most this many outstanding logins per account: an app (or a stolen credential)
        # logging in in a loop cannot grow the store without bound; the least recently
        # refreshed grant ends first, as the platform ends sessions beyond "the limit (usually
        # five) of parallel active sessions" (ringcentral-api-docs
        # docs/authentication/tokens.md, "Access token expiration and invalidation")
        virtual.grants_per_account = config.proxy.virtual_grants_per_account
        self._throttle = throttle or BadKeyThrottle(config.proxy.bad_key_limit)
        self._throttle.client_limit = config.proxy.login_failure_limit
        self._by_client: dict[str, list[AccountConfig]] = {}
        self.accounts_changed(config.accounts)

    def accounts_changed(self, accounts: tuple[AccountConfig, ...]) -> None:
        """The accounts apps may log in as (start-up, and a reload): by client id, and the
        credentials their grants are bound to (a changed credential ends the old grants)."""
        by_client: dict[str, list[AccountConfig]] = {}
        for account in accounts:
            by_client.setdefault(account.client_id, []).append(account)
        self._by_client = by_client
        self._virtual.use_accounts(accounts)

    def _platform_of(self, client_id: str) -> str:
        """Where the authorize page of ``client_id`` lives: its accounts' platform when they
        agree on one (sandbox beside production), else the proxy's."""
        platforms = {a.upstream or self._upstream for a in self._by_client.get(client_id, ())}
        return platforms.pop() if len(platforms) == 1 else self._upstream

    @staticmethod
    def handles(path: str) -> bool:
        return path.split("?", 1)[0] in (TOKEN_PATH, REVOKE_PATH, AUTHORIZE_PATH)

    async def answer(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        path = request.path.split("?", 1)[0]
        if path == AUTHORIZE_PATH and request.method == "GET":
            # the browser part of the authorization-code flow is the platform's own page
            flow.response = http.Response.make(
                302, b"", {"Location": self._platform_of(request.query.get("client_id", ""))
                           + request.path, **NO_STORE})
            return
        if request.method != "POST" or path == AUTHORIZE_PATH:  # authorize is GET only
            allowed = "GET" if path == AUTHORIZE_PATH else "POST"
            flow.response = oauth_error("OAU-102", "invalid_request",
                                        f"{request.method} is not supported here", 405)
            flow.response.headers["Allow"] = allowed
            return
        address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        try:
            form: Mapping[str, str] = request.urlencoded_form
            if path == TOKEN_PATH:
                flow.response = await self._token(request, form, address)
            else:
                flow.response = await self._revoke(request, form, address)
        except StoreError as exc:
            log.error("login interception: the store is unreachable: %s", exc)
            flow.response = error_response(503, "TPX-STORE-UNAVAILABLE",
                                           "The token store is unreachable; try again shortly.",
                                           1.0)

    def _client_id(self, request: http.Request, form: Mapping[str, str]) -> tuple[str, str]:
        pair = _basic(request.headers.get("authorization"))
        return pair if pair else (form.get("client_id", ""), "")

    def _candidates(self, client_id: str, secret: str) -> list[AccountConfig]:
        """The accounts of ``client_id`` whose client secret the caller proved (a public
        client, configured without a secret, is proven by its client id alone)."""
        return [a for a in self._by_client.get(client_id, [])
                if (a.client_secret is None and not secret)
                or (a.client_secret is not None and _same(secret, a.client_secret.reveal()))]

    def _known(self, client_id: str) -> str | None:
        """The client id as a throttle key: only configured ones (bounded memory)."""
        return client_id if client_id in self._by_client else None

    async def _failed(self, address: str, client_id: str, reason: str,
                      answer: tuple[str, str, str]) -> http.Response:
        """Count the failure, wait what the throttle says, answer ``answer`` (status 400)."""
        log.warning("login through the proxy refused for client %s: %s", client_id or "-",
                    reason, extra={"event": "login_refused"})
        delay = self._throttle.delay(address, self._known(client_id))
        if delay > 0:
            await asyncio.sleep(delay)  # the form is read already: nothing queues meanwhile
        return oauth_error(*answer)

    def _rate_limited(self, address: str, client_id: str | None) -> http.Response | None:
        """The platform's auth rate-limit answer (ringcentral-api-docs
        docs/basics/rate-limits.md: 429, CMN-301, Retry-After) while the address or client id
        is over its failure limit; None otherwise."""
        wait = self._throttle.retry_after(address, client_id)
        if wait <= 0:
            return None
        message = "Request rate exceeded"
        body = json.dumps({"errorCode": "CMN-301", "message": message,
                           "errors": [{"errorCode": "CMN-301", "message": message}]}).encode()
        return http.Response.make(429, body, {"Content-Type": "application/json",
                                              "Retry-After": str(max(1, math.ceil(wait))),
                                              **NO_STORE})

    async def _token(self, request: http.Request, form: Mapping[str, str],
                     address: str) -> http.Response:
        client_id, secret = self._client_id(request, form)
        grant = form.get("grant_type", "")
        # refreshes are limited per address only: a refresh token cannot be guessed, and
        # someone else's guessing must not lock out the apps already logged in
        limited = self._rate_limited(address, None if grant == "refresh_token"
                                     else self._known(client_id))
        if limited is not None:
            return limited
        if not grant:  # checked before the client: says nothing about any secret
            return oauth_error("OAU-101", "invalid_request",
                               "Parameter [grant_type] is not specified")
        if grant not in (JWT_GRANT, "password", "refresh_token", "authorization_code"):
            return oauth_error("OAU-250", "unsupported_grant_type", "Unsupported grant type")
        candidates = self._candidates(client_id, secret) if client_id else []
        failed = REFRESH_FAILED if grant == "refresh_token" else LOGIN_FAILED
        if not candidates:  # answered like wrong credentials: which half was wrong stays ours
            return await self._failed(address, client_id, "unknown client id or wrong client "
                                      "secret", failed)
        if grant == "refresh_token":
            rotated = await self._virtual.rotate(form.get("refresh_token", ""), client_id)
            if rotated is None:
                return await self._failed(address, client_id, "refresh token unknown, spent, "
                                          "revoked or expired", failed)
            account_name, pair = rotated
            return await self._issued(account_name, pair)
        if grant == "authorization_code":
            answer = await self._code(candidates, client_id, form)
            if answer.status_code == 400:
                self._throttle.delay(address, self._known(client_id))
            return answer
        account = next((a for a in candidates if _matches(a, grant, form)), None)
        if account is None:
            kind = "jwt" if grant == JWT_GRANT else grant
            return await self._failed(address, client_id, f"{kind} credentials do not match a "
                                      "configured account", failed)
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
            "session_id": SESSION_PREFIX + account_name,
        }
        return http.Response.make(200, json.dumps(body).encode(),
                                  {"Content-Type": "application/json", **NO_STORE})

    async def _revoke(self, request: http.Request, form: Mapping[str, str],
                      address: str) -> http.Response:
        """Like the platform (ringcentral-api-docs docs/authentication/tokens.md, lines 17-29:
        the request must carry the client's Basic credentials; a public client sends its
        client_id, auth-code-pkce-flow.md "Step 6"), and 200 even when nothing was revoked
        (a token of another client, expired or malformed: RFC 7009)."""
        client_id, secret = self._client_id(request, form)
        limited = self._rate_limited(address, None)
        if limited is not None:
            return limited
        if not client_id or not self._candidates(client_id, secret):
            log.warning("revoke through the proxy refused for client %s: unknown client id or "
                        "wrong client secret", client_id or "-", extra={"event": "login_refused"})
            delay = self._throttle.delay(address, self._known(client_id))
            if delay > 0:
                await asyncio.sleep(delay)
            return oauth_error("OAU-153", "invalid_client", "Invalid client", 401)
        token = form.get("token", "")
        if not token:
            return oauth_error("OAU-101", "invalid_request", "Parameter [token] is not specified")
        grant = (await self._virtual.resolve(token, "access")
                 or await self._virtual.resolve(token, "refresh"))
        if grant is not None and grant.client_id == client_id:
            await self._virtual.revoke_pair(grant)  # only ever a virtual pair; real tokens stay
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


def issued_account(response: http.Response) -> str | None:
    """The account a successful login answer of this module was issued for (its
    ``session_id``), for the request metrics; None for any other answer."""
    if response.status_code != 200:
        return None
    try:
        session = json.loads(response.content or b"").get("session_id", "")
    except (ValueError, AttributeError):
        return None
    return session.removeprefix(SESSION_PREFIX) if isinstance(session, str) \
        and session.startswith(SESSION_PREFIX) else None
