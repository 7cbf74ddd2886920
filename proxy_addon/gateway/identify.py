"""Who is calling? The second addon a request meets (after :mod:`.guard`).

``requestheaders``: the Bearer an app sends must be a configured client key, or a virtual token
the proxy issued when the app logged in through it (:mod:`proxy_addon.virtual.grants`, resolved
to its account in the store). Anything else is answered here (401, in the platform's shape for
a dead virtual token) and never reaches the pool or the upstream; an address that keeps guessing
waits a little longer for each refusal (:class:`~.throttle.BadKeyThrottle`). An identified flow
gets its :class:`~.flow_context.FlowContext` with the client and the account's tokens, which
:mod:`.inject` acts on. Flows already answered (refused by the guard) or marked for the login
interceptor are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Iterable

from mitmproxy import http

from ..config import AccountConfig, ClientConfig, Secret
from ..store import StoreError
from ..tokens.pool import TokenPool
from ..virtual.grants import VirtualTokens, looks_virtual
from . import errors
from .early_answer import has_body, refuse_at_headers
from .flow_context import attach, context_of
from .throttle import BadKeyThrottle


def login_client_name(account: str) -> str:
    return f"{account}-login"


def login_clients(accounts: Iterable[AccountConfig]) -> dict[str, ClientConfig]:
    """Apps that log in through the proxy count as one client per account."""
    return {a.name: ClientConfig(login_client_name(a.name), a.name, Secret(""))
            for a in accounts}


class Identify:
    def __init__(self, clients: Iterable[ClientConfig], accounts: Iterable[AccountConfig],
                 pool: TokenPool, throttle: BadKeyThrottle,
                 virtual: VirtualTokens | None = None) -> None:
        self._pool = pool
        self._throttle = throttle
        self._virtual = virtual  # None: no logins through the proxy, no virtual tokens
        self._login_clients = login_clients(accounts)
        # every key of every client, by digest (several while a key rotates; `key_sha256`)
        self._clients = {bytes.fromhex(d): c for c in clients for d in c.digests()}
        # keys seen to match, by value: one dict lookup per request instead of a SHA-256
        # (only configured keys get in: bounded; unknown keys are always looked up by digest)
        self._matched_keys: dict[str, ClientConfig] = {}

    def accounts_changed(self, accounts: Iterable[AccountConfig]) -> None:
        """A reload: apps logging in through the proxy count as the new accounts' clients."""
        self._login_clients = login_clients(accounts)

    def clients_changed(self, clients: Iterable[ClientConfig]) -> None:
        """A reload: the new clients' keys identify from the next request on."""
        self._clients = {bytes.fromhex(d): c for c in clients for d in c.digests()}
        self._matched_keys = {}

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None  # refused by the guard
        context = context_of(flow)
        if context is not None and (context.login or context.events_socket):
            return None  # the login interceptor's, or a ws token's (events_route)
        request = flow.request
        key = _bearer(request.headers.get("authorization"))
        if key and self._virtual is not None and looks_virtual(key):
            return self._resolve_virtual(flow, key)
        client = self._client_of(key) if key else None
        if client is None:
            problem = ("The Bearer credential is not a configured client key" if key
                       else "No client key was sent")
            response = errors.error_response(
                401, errors.CLIENT_UNKNOWN,
                f"{problem}: send 'Authorization: Bearer <key>' with a key configured under "
                "[[clients]] in the tokenproxy config.")
            return self._refuse(flow, response, counted=bool(key))
        self._admit(flow, client)
        return None

    def _admit(self, flow: http.HTTPFlow, client: ClientConfig) -> None:
        context = attach(flow)
        context.client = client
        context.account = self._pool[client.account]

    def _client_of(self, key: str) -> ClientConfig | None:
        client = self._matched_keys.get(key)
        if client is None:
            client = self._clients.get(_digest(key))
            if client is not None:
                self._matched_keys[key] = client
        return client

    def _refuse(self, flow: http.HTTPFlow, response: http.Response,
                counted: bool) -> Awaitable[None] | None:
        """Refuse an unknown credential. An address that keeps guessing waits a little longer
        each time, but only when no body follows: while a hook waits, mitmproxy queues what
        the client sends in memory, so a refusal with a body leaves at once (and closes)."""
        delay = self._throttle.delay(flow.client_conn.peername[0]) if counted else 0.0
        if delay <= 0 or has_body(flow.request):
            refuse_at_headers(flow, response)
            return None
        return _refuse_later(flow, response, delay)

    async def _resolve_virtual(self, flow: http.HTTPFlow, key: str) -> None:
        """An app that logged in through the proxy: its virtual token names the account.
        Resolved at the request's headers, so a refusal never waits for the body."""
        assert self._virtual is not None
        try:
            grant, code = await self._virtual.resolve_access(key)
        except StoreError:
            refuse_at_headers(flow, errors.error_response(
                503, "TPX-STORE-UNAVAILABLE", "The token store is unreachable.", 1.0))
            return
        if grant is None or grant.account not in self._pool.accounts:
            expired = code == "OAU-210"
            refusal = errors.platform_token_error(
                "OAU-210" if expired else "OAU-213",
                "Token expired" if expired else "Token not found")
            waiting = self._refuse(flow, refusal, counted=not expired)
            if waiting is not None:
                await waiting
            return
        self._admit(flow, self._login_clients[grant.account])


async def _refuse_later(flow: http.HTTPFlow, response: http.Response, delay: float) -> None:
    await asyncio.sleep(delay)  # an address guessing keys waits; nobody else does
    refuse_at_headers(flow, response)


def _bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header (scheme any case)."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    return credential or None


def _digest(key: str) -> bytes:
    # Look keys up by digest: the dict lookup then reveals nothing about the keys' bytes.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
