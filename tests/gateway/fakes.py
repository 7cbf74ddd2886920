"""Small fakes and drivers for in-process tests of the gateway's addons (mitmproxy's
``taddons``/``tflow``): an account's token pool that records leases, a pool, a replay sender,
and :func:`drive`, which sends hook events to an addon as mitmproxy's addon manager does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import hooks, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.layers.http import (
    HttpErrorHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import taddons, tflow, tutils

from proxy_addon.config import ClientConfig, Secret
from proxy_addon.tokens.failures import Reason, TokenUnavailable

APP_KEY = "app-key-0123456789"
CLIENT = ClientConfig("app", "main", Secret(APP_KEY))


@dataclass
class Account:
    """The fake account of :class:`Pool` (its ``name`` and platform, as ``AccountConfig``
    has: no platform of its own, the proxy's)."""

    name: str
    upstream: str | None = None
    media_upstream: str | None = None


@dataclass
class FakeAccount:
    """An account's tokens: ``try_lease`` hands out ``token`` (or None: ``fresh`` is False),
    ``lease`` waits for ``renewed`` or raises ``unavailable``; every call is recorded."""

    account: Account = field(default_factory=lambda: Account("main"))
    token: str = "live-token-1"
    generation: int = 1
    fresh: bool = True
    unavailable: TokenUnavailable | None = None
    renewed: list[tuple[str, int]] = field(default_factory=list)  # what rejected() hands out
    leases: int = 0  # leases held
    released: list[int] = field(default_factory=list)
    rejected_calls: list[tuple[int, str]] = field(default_factory=list)
    noted: list[tuple[int, str]] = field(default_factory=list)

    def try_lease(self) -> tuple[str, int] | None:
        if not self.fresh:
            return None
        self.leases += 1
        return self.token, self.generation

    async def lease(self, deadline: float | None = None) -> tuple[str, int]:
        await asyncio.sleep(0)
        if self.unavailable is not None:
            raise self.unavailable
        self.leases += 1
        return self.token, self.generation

    def release(self, generation: int) -> None:
        self.leases -= 1
        self.released.append(generation)

    def deadline(self, arrived: float) -> float:
        return arrived + 10.0

    def note_rejected(self, generation: int, code: str) -> None:
        self.noted.append((generation, code))

    async def rejected(self, generation: int, code: str,
                       deadline: float | None = None) -> tuple[str, int]:
        self.rejected_calls.append((generation, code))
        await asyncio.sleep(0)
        if self.unavailable is not None:
            raise self.unavailable
        self.token, self.generation = self.renewed.pop(0)
        self.leases += 1
        return self.token, self.generation


def unavailable(retry_after: float = 2.0) -> TokenUnavailable:
    """What the pool raises when a token wait times out (the one place tests build one)."""
    return TokenUnavailable(Reason.TIMEOUT, "main", retry_after=retry_after, waited=10.0)


class Pool:
    def __init__(self, *accounts: FakeAccount) -> None:
        self.accounts = {a.account.name: a for a in accounts or (FakeAccount(),)}

    def __getitem__(self, name: str) -> Any:
        return self.accounts[name]


class FakeReplayer:
    """Answers each replay with the next of ``answers``; records the tokens sent."""

    def __init__(self, *answers: http.Response) -> None:
        self.answers = list(answers)
        self.sent: list[str] = []

    async def send(self, request: http.Request, access_token: str) -> tuple[http.Response, int]:
        self.sent.append(access_token)
        return self.answers.pop(0), 0


def flow(path: str = "/restapi/v1.0/account/~", method: str = "GET",
         headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
         tls: bool = False, address: str = "127.0.0.1") -> http.HTTPFlow:
    """A live flow from ``address`` to the proxy at 127.0.0.1:8080, without an answer."""
    fields = [(k.encode(), v.encode()) for k, v in headers]
    if body:
        fields.append((b"content-length", str(len(body)).encode()))
    request = tutils.treq(method=method.encode(), path=path.encode(), host="127.0.0.1",
                          port=8080, headers=http.Headers(fields), content=body)
    f = tflow.tflow(req=request)
    f.client_conn.peername = (address, 50000)
    f.client_conn.sockname = ("127.0.0.1", 8080)
    f.client_conn.state = ConnectionState.OPEN
    f.client_conn.timestamp_tls_setup = 1.0 if tls else None
    return f


def with_key(key: str = APP_KEY, **kwargs: Any) -> http.HTTPFlow:
    headers = [("Authorization", f"Bearer {key}"), *kwargs.pop("headers", ())]
    return flow(headers=headers, **kwargs)


def json_response(status: int, body: bytes, **headers: str) -> http.Response:
    return http.Response.make(status, body, {"Content-Type": "application/json", **headers})


def token_401(code: str) -> http.Response:
    return json_response(401, b'{"errorCode":"TokenInvalid","errors":[{"errorCode":"'
                         + code.encode() + b'","message":"x"}]}')


REQUEST_HEADERS: Callable[[http.HTTPFlow], hooks.Hook] = HttpRequestHeadersHook
REQUEST: Callable[[http.HTTPFlow], hooks.Hook] = HttpRequestHook
RESPONSE_HEADERS: Callable[[http.HTTPFlow], hooks.Hook] = HttpResponseHeadersHook
RESPONSE: Callable[[http.HTTPFlow], hooks.Hook] = HttpResponseHook
ERROR: Callable[[http.HTTPFlow], hooks.Hook] = HttpErrorHook


def drive(addon: object, f: http.HTTPFlow, *events: Callable[[http.HTTPFlow], hooks.Hook],
          before: Callable[[str], None] | None = None) -> None:
    """Invoke ``events`` for ``f`` on ``addon`` (and its child addons) in order, as mitmproxy's
    addon manager does: an awaitable a hook returns is awaited before the next hook runs.
    ``before(event name)`` runs before each event (e.g. to set an upstream answer)."""

    async def run() -> None:
        with taddons.context(addon, loadcore=False) as tctx:
            for event in events:
                hook = event(f)
                if before is not None:
                    before(hook.name)
                await tctx.master.addons.invoke_addon(addon, hook)

    asyncio.run(run())
