"""Real ws tokens from the platform for the proxy's own upstream sockets.

``POST /restapi/oauth/wstoken`` with the account's live access token (leased from the pool, so
a rotation waits for it) answers ``{ws_access_token, uri, expires_in}``; it is in the Auth
rate-limit group, shared with the token endpoint (ringcentral-api-docs
``docs/notifications/websockets/subscribing.md``; ``../shared/platform-rate-groups.tsv``), so
every call first takes a slot of the account's Auth budget (:mod:`proxy_addon.tokens.budget`,
issue 13) and teaches it the limit the answer's headers state. A token 401 renews the session
(``AccountTokens.rejected``) and tries once more. Errors name the status and code, never a token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..ratelimit.headers import rate_headers, retry_after
from ..tokens.account import AccountTokens
from ..tokens.budget import AuthBudget

WSTOKEN_PATH = "/restapi/oauth/wstoken"
MAX_BUDGET_WAIT = 120.0


@dataclass(frozen=True, slots=True)
class UpstreamWsToken:
    token: str
    uri: str
    expires_in: float
    issued: float  # monotonic

    def young(self, now: float) -> bool:
        """Still within 80 % of its lifetime, the SDKs' reuse rule."""
        return now < self.issued + 0.8 * self.expires_in


class WsTokenUnavailable(Exception):
    """No ws token now; ``retry_after`` seconds before asking again."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PlatformWsTokens:
    def __init__(self, upstream: str, http: httpx.AsyncClient, account: AccountTokens,
                 budget: AuthBudget | None, counted: Callable[[str], None]) -> None:
        self._url = upstream.rstrip("/") + WSTOKEN_PATH
        self._http = http
        self._account = account
        self._budget = budget
        self._counted = counted  # outcome label of each call: ok, rejected, limited, error

    async def fetch(self) -> UpstreamWsToken:
        token, generation = await self._account.lease()
        try:
            for attempt in range(2):
                await self._take_budget()
                answer = await self._post(token)
                if answer.status_code == 401 and attempt == 0:
                    self._counted("rejected")
                    code = _error_code(answer) or "OAU-213"
                    used, generation = generation, -1
                    self._account.release(used)
                    token, generation = await self._account.rejected(used, code)
                    continue
                return self._read(answer)
            raise AssertionError("unreachable")
        finally:
            if generation >= 0:
                self._account.release(generation)

    async def _take_budget(self) -> None:
        if self._budget is None:
            return
        started = time.monotonic()
        while (wait := await self._budget.take()) > 0:
            if time.monotonic() - started + wait > MAX_BUDGET_WAIT:
                raise WsTokenUnavailable("the account's Auth budget is spent", wait)
            await asyncio.sleep(min(wait, 5.0))

    async def _post(self, token: str) -> httpx.Response:
        try:
            answer = await self._http.post(self._url, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/json"})
        except httpx.HTTPError as exc:
            self._counted("error")
            raise WsTokenUnavailable(f"the platform is unreachable ({exc.__class__.__name__})",
                                     2.0) from None
        if self._budget is not None:
            rate = rate_headers(answer.headers)
            self._budget.learn(rate.limit, rate.window)
        return answer

    def _read(self, answer: httpx.Response) -> UpstreamWsToken:
        if answer.status_code == 429:
            self._counted("limited")
            wait = retry_after(answer.headers, 30.0, 600.0)
            raise WsTokenUnavailable(f"the platform rate-limited the ws token call "
                                     f"({_error_code(answer) or 429})", wait)
        if answer.status_code != 200:
            self._counted("error")
            raise WsTokenUnavailable(f"the platform answered {answer.status_code} "
                                     f"{_error_code(answer) or ''}".strip(), 5.0)
        try:
            body = answer.json()
            token, uri, expires_in = body["ws_access_token"], body["uri"], body["expires_in"]
            if not isinstance(token, str) or not token or not isinstance(uri, str) \
                    or urlsplit(uri).scheme not in ("ws", "wss") \
                    or not isinstance(expires_in, int | float) or expires_in <= 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self._counted("error")
            raise WsTokenUnavailable("the platform's ws token answer is malformed (expected "
                                     "ws_access_token, a ws:// or wss:// uri, expires_in)",
                                     5.0) from None
        self._counted("ok")
        return UpstreamWsToken(token, uri, float(min(expires_in, 86400)), time.monotonic())


def _error_code(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    code = body.get("errorCode") if isinstance(body, dict) else None
    if code is None and isinstance(body, dict) and isinstance(body.get("errors"), list) \
            and body["errors"] and isinstance(body["errors"][0], dict):
        code = body["errors"][0].get("errorCode")
    return str(code)[:40] if code else None
