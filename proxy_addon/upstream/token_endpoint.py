"""Client of the platform's token endpoint: log in with an account's grant, refresh, revoke.

Implements the token core's :class:`~proxy_addon.tokens.ports.Platform` port; called by the
pool's renewals (never on the request hot path). Each account's calls go to its own platform
(``[[accounts]] upstream``: sandbox beside production), by default the proxy's. Answers become a
:class:`~proxy_addon.tokens.token_set.TokenSet` or raise :class:`TokenEndpointError`
(the platform said no) or :class:`UpstreamUnreachable` (no answer at all).
Nothing here logs credentials. Each call is an OpenTelemetry CLIENT span (``[tracing]``,
:mod:`proxy_addon.ops.tracing`), child of the renewal's, and carries it as ``traceparent``.
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Awaitable, Callable

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from ..config import AccountConfig
from ..ops.metrics import Metrics
from ..ops.tracing import inject
from ..tokens.ports import PlatformUnreachable
from ..tokens.token_set import MalformedTokenResponse, TokenSet
from .platform_errors import TokenEndpointError

TOKEN_PATH = "/restapi/oauth/token"
REVOKE_PATH = "/restapi/oauth/revoke"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_LABELS = {JWT_GRANT: "jwt", "password": "password", "refresh_token": "refresh_token",
                "authorization_code": "authorization_code"}


class UpstreamUnreachable(PlatformUnreachable):
    """The platform could not be reached (connection refused, DNS, TLS, timeout)."""


_tracer = trace.get_tracer("tokenproxy.upstream")  # a no-op until [tracing] installs one
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an error code fit for an attribute
_Post = Callable[["TokenEndpoint", AccountConfig, str, dict[str, str]],
                 Awaitable[httpx.Response]]


def _traced(post: _Post) -> _Post:
    """A CLIENT span around one call to the token endpoint (the call's ``traceparent`` is
    this span): the path, account, grant, status and the platform's error code; never a
    form field but the grant type, a header or a body."""

    @functools.wraps(post)
    async def call(self: TokenEndpoint, account: AccountConfig, path: str,
                   form: dict[str, str]) -> httpx.Response:
        attributes: dict[str, str | int] = {"http.request.method": "POST", "url.path": path,
                                            "tokenproxy.account": account.name}
        if "grant_type" in form:
            attributes["tokenproxy.grant"] = GRANT_LABELS.get(form["grant_type"], "other")
        with _tracer.start_as_current_span(f"POST {path}", kind=SpanKind.CLIENT,
                                           attributes=attributes, record_exception=False,
                                           set_status_on_exception=False) as span:
            try:
                response = await post(self, account, path, form)
            except UpstreamUnreachable:
                span.set_attribute("error.type", "unreachable")
                span.set_status(StatusCode.ERROR, "the platform is unreachable")
                raise
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            if not 200 <= status < 300 and span.is_recording():
                error = TokenEndpointError.from_response(status, response.content, None)
                code = error.code if _CODE.fullmatch(error.code) else ""
                reason = error.error if _CODE.fullmatch(error.error) else ""
                if code:
                    span.set_attribute("tokenproxy.error_code", code)
                span.set_attribute("error.type", reason or str(status))
                span.set_status(StatusCode.ERROR, code or reason or f"HTTP {status}")
            return response

    return call


class TokenEndpoint:
    def __init__(self, upstream: str, http: httpx.AsyncClient,
                 metrics: Metrics | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self._http = http
        self._metrics = metrics or Metrics()
        # told each token answer's headers (its X-Rate-Limit-* say the Auth group's limit)
        self.on_answer: Callable[[AccountConfig, httpx.Headers], None] | None = None

    async def login(self, account: AccountConfig) -> TokenSet:
        """Start a new session with the account's own grant (creates a platform session)."""
        form: dict[str, str]
        if account.grant == "jwt":
            assert account.jwt is not None
            form = {"grant_type": JWT_GRANT, "assertion": account.jwt.reveal()}
        elif account.grant == "password":
            assert account.username is not None and account.password is not None
            form = {"grant_type": "password", "username": account.username,
                    "password": account.password.reveal()}
            if account.extension:
                form["extension"] = account.extension
        elif account.grant == "authorization_code":
            assert account.auth_code is not None and account.redirect_uri is not None
            form = {"grant_type": "authorization_code", "code": account.auth_code.reveal(),
                    "redirect_uri": account.redirect_uri}
            if account.code_verifier:
                form["code_verifier"] = account.code_verifier.reveal()
        else:
            raise ValueError(f"grant {account.grant!r} cannot start a session")
        return await self._token_call(account, form)

    async def exchange_code(self, account: AccountConfig, code: str, redirect_uri: str,
                            code_verifier: str | None) -> TokenSet:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return await self._token_call(account, form)

    async def refresh(self, account: AccountConfig, refresh_token: str) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_call(account, form)

    async def revoke(self, account: AccountConfig, token: str) -> None:
        """End the session ``token`` belongs to (the platform kills the whole session).
        Raises TokenEndpointError when the platform refuses, UpstreamUnreachable without an
        answer."""
        response = await self._post(account, REVOKE_PATH, {"token": token})
        if not 200 <= response.status_code < 300:
            raise TokenEndpointError.from_response(
                response.status_code, response.content, response.headers.get("retry-after"))

    async def _token_call(self, account: AccountConfig, form: dict[str, str]) -> TokenSet:
        if account.access_token_ttl is not None:
            form["access_token_ttl"] = str(account.access_token_ttl)
        requested_at = time.time()
        grant = GRANT_LABELS.get(form["grant_type"], "other")
        metrics, name = self._metrics, account.name
        started = time.monotonic()
        try:
            response = await self._post(account, TOKEN_PATH, form)
        except UpstreamUnreachable:
            metrics.token_calls.labels(name, grant, "unreachable").inc()
            raise
        finally:
            metrics.token_call_seconds.labels(name).observe(time.monotonic() - started)
        if self.on_answer is not None:
            self.on_answer(account, response.headers)
        status = response.status_code
        if status != 200:
            error = TokenEndpointError.from_response(
                status, response.content, response.headers.get("retry-after"))
            if error.rate_limited:
                metrics.token_rate_limited.labels(name).inc()
            outcome = ("rate_limited" if error.rate_limited else
                       "server_error" if status >= 500 else "rejected")
            metrics.token_calls.labels(name, grant, outcome).inc()
            raise error
        try:
            tokens = TokenSet.from_response(response.content, requested_at)
        except MalformedTokenResponse as exc:
            metrics.token_calls.labels(name, grant, "server_error").inc()
            raise TokenEndpointError(502, "", "", str(exc)) from None
        metrics.token_calls.labels(name, grant, "success").inc()
        return tokens

    @_traced
    async def _post(self, account: AccountConfig, path: str, form: dict[str, str]
                    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        inject(headers)  # traceparent: the token call's span ([tracing]; else nothing)
        if account.client_secret:
            pair = f"{account.client_id}:{account.client_secret.reveal()}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form = {**form, "client_id": account.client_id}
        upstream = self.origin_of(account)
        try:
            return await self._http.post(upstream + path, data=form, headers=headers)
        except httpx.TimeoutException:
            raise UpstreamUnreachable(f"timed out calling {upstream}{path}") from None
        except httpx.TransportError as exc:
            raise UpstreamUnreachable(
                f"cannot reach {upstream}{path}: {type(exc).__name__}") from None

    def origin_of(self, account: AccountConfig) -> str:
        """The platform ``account`` lives on: its own ``upstream`` (sandbox beside production),
        else this endpoint's."""
        return (account.upstream or self.upstream).rstrip("/")
