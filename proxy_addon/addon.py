"""The mitmproxy addon: identify the calling app, swap its credential for a live token, and
replay requests the platform refused with a token 401.

Hooks, in the order a request meets them:

- ``requestheaders``: who is calling? The Bearer the app sent must be a configured client key;
  anything else is answered here (401) and never reaches the pool or the upstream.
- ``request``: strip the app's credential and inject the account's token, taken from the pool
  without awaiting anything while the token is fresh.
- ``responseheaders``: the platform authenticated (or refused) the request: the lease on the
  token generation ends; large answers stream through.
- ``response``: a 401 with OAU-213/210/128/129 means the token died: renew once (coalesced in
  the pool) and replay the request transparently.
- ``error``: the flow died; its lease ends too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http

from . import proxy_errors
from .config import ClientConfig, Config, Secret
from .links import LinkRewriter
from .login import LoginInterceptor
from .metrics import NO_ACCOUNT, TOKEN_ERROR_CODES, UNKNOWN_CLIENT, Metrics, bounded, status_class
from .oauth import UpstreamUnreachable
from .platform_errors import token_error_code
from .pool import AccountTokens, TokenPool, TokenUnavailable
from .replay import Replayer
from .store import StoreError
from .throttle import BadKeyThrottle
from .virtual_tokens import VirtualTokens, looks_virtual

log = logging.getLogger("tokenproxy.addon")

FLOW_KEY = "tokenproxy"
# Headers an app must not set: they would claim to come from a proxy in front of us.
SPOOFABLE_HEADERS = ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                     "x-forwarded-port", "x-forwarded-prefix", "forwarded", "x-real-ip",
                     "proxy-authorization", "proxy-connection")
# A request is sent again after a token 401; once more only if the replay's own, newer token
# died too (a revocation or eviction landing between renewal and replay).
MAX_REPLAYS = 2
_SPOOFABLE_NAMES = frozenset(name.encode() for name in SPOOFABLE_HEADERS)
LOGIN_KEY = "tokenproxy-login"
VIRTUAL_KEY = "tokenproxy-virtual"


def login_client_name(account: str) -> str:
    return f"{account}-login"
OAUTH_PREFIX = "/restapi/oauth/"


@dataclass(slots=True)
class FlowTokenState:
    """What the addon remembers about one flow between its hooks."""

    client: ClientConfig
    account: AccountTokens
    generation: int = -1  # token generation injected; -1 before injection
    leased: bool = False  # holds a lease on ``generation`` in the pool
    replayed: bool = False


class TokenInjector:
    """Client identification, token injection and transparent replay."""

    def __init__(self, config: Config, pool: TokenPool, replayer: Replayer,
                 metrics: Metrics | None = None, login: LoginInterceptor | None = None,
                 virtual: VirtualTokens | None = None) -> None:
        self._pool = pool
        self._login = login
        self._virtual = virtual
        # apps that log in through the proxy count as one client per account
        self._login_clients = {a.name: ClientConfig(login_client_name(a.name), a.name,
                                                    Secret(""))
                               for a in config.accounts}
        self._metrics = metrics or Metrics()
        self._replayer = replayer
        self._stream_threshold = config.proxy.stream_threshold
        self._body_limit = config.proxy.replay_body_limit
        self._require_tls = config.proxy.tls_cert is not None
        self._throttle = BadKeyThrottle(config.proxy.bad_key_limit)
        self._links = LinkRewriter(config.proxy.upstream, config.proxy.media_upstream,
                                   config.proxy.public_url)
        self._clients = {_digest(c.key.reveal()): c for c in config.clients}
        # keys seen to match, by value: one dict lookup per request instead of a SHA-256
        # (only configured keys get in: bounded; unknown keys are always looked up by digest)
        self._matched_keys: dict[str, ClientConfig] = {}
        # metric children by label values (all from the config and fixed sets: bounded);
        # looking them up once keeps prometheus-client's label handling off the hot path
        self._request_counters: dict[tuple[str, str, str], Any] = {}
        self._upstream_histograms: dict[str, Any] = {}
        self.listening: list[str] = []
        self.on_listening: Callable[[list[str]], None] | None = None

    # -- hooks ---------------------------------------------------------------------------

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        addresses = server.listen_addrs() if server is not None else []
        scheme = "https" if self._require_tls else "http"
        self.listening = [f"{scheme}://{host}:{port}" for host, port, *_ in addresses]
        for url in self.listening:
            print(f"tokenproxy listening on {url}", flush=True)
        if self.on_listening is not None:
            self.on_listening(self.listening)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        request = flow.request
        if self._require_tls and not flow.client_conn.tls_established:
            flow.response = proxy_errors.error_response(
                400, "TPX-TLS-REQUIRED", "This proxy only accepts HTTPS: use https:// in the "
                "server URL (and treat any credential just sent in clear as exposed).")
            return None
        if any(name.lower() in _SPOOFABLE_NAMES for name, _ in request.headers.fields):
            for name in SPOOFABLE_HEADERS:  # never let an app speak for the proxy
                request.headers.pop(name, None)
        for name in _connection_tokens(request.headers.get("connection", "")):
            request.headers.pop(name, None)  # hop-by-hop, listed by the client
        if self._login is not None and LoginInterceptor.handles(request.path):
            flow.metadata[LOGIN_KEY] = True  # answered in `request`, once the form is in
            return None
        if request.path.startswith(OAUTH_PREFIX):
            flow.response = proxy_errors.error_response(
                403, proxy_errors.OAUTH_MANAGED,
                "tokenproxy manages this account's OAuth tokens: do not log in through the "
                "proxy; send your client key as 'Authorization: Bearer <key>' on API calls.")
            return None
        key = _bearer(request.headers.get("authorization"))
        if key and self._login is not None and looks_virtual(key):
            flow.metadata[VIRTUAL_KEY] = key  # resolved in `request` (may read the store)
            return self._resolve_virtual(flow) if self._limit_body(flow) else None
        client = self._client_of(key) if key else None
        if client is None:
            problem = ("The Bearer credential is not a configured client key" if key
                       else "No client key was sent")
            response = proxy_errors.error_response(
                401, proxy_errors.CLIENT_UNKNOWN,
                f"{problem}: send 'Authorization: Bearer <key>' with a key configured under "
                "[[clients]] in the tokenproxy config.")
            delay = self._throttle.delay(flow.client_conn.peername[0]) if key else 0.0
            if delay <= 0:
                flow.response = response
                return None
            return self._refuse_later(flow, response, delay)
        state = FlowTokenState(client, self._pool[client.account])
        flow.metadata[FLOW_KEY] = state
        if self._limit_body(flow):
            # a streamed request leaves as soon as its headers are done: swap the credential now
            return self._swap_credentials(flow, state)
        return None

    def _client_of(self, key: str) -> ClientConfig | None:
        client = self._matched_keys.get(key)
        if client is None:
            client = self._clients.get(_digest(key))
            if client is not None:
                self._matched_keys[key] = client
        return client

    @staticmethod
    async def _refuse_later(flow: http.HTTPFlow, response: http.Response, delay: float) -> None:
        await asyncio.sleep(delay)  # an address guessing keys waits; nobody else does
        flow.response = response

    def _limit_body(self, flow: http.HTTPFlow) -> bool:
        """Bodies up to ``replay_body_limit`` are buffered (replayable); larger ones stream
        through and cannot be replayed after a token 401. True when the body streams."""
        length = flow.request.headers.get("content-length", "")
        chunked = "chunked" in flow.request.headers.get("transfer-encoding", "").lower()
        if chunked or (length.isdigit() and int(length) > self._body_limit):
            flow.request.stream = True
            return True
        return False

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        if flow.metadata.get(LOGIN_KEY) and self._login is not None:
            return self._login.answer(flow)
        if VIRTUAL_KEY in flow.metadata:
            return self._resolve_virtual(flow)
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        if state is None or state.generation >= 0:  # none, or swapped already (streamed)
            return None
        return self._swap_credentials(flow, state)

    async def _resolve_virtual(self, flow: http.HTTPFlow) -> None:
        """An app that logged in through the proxy: its virtual token names the account."""
        assert self._virtual is not None
        try:
            grant = await self._virtual.resolve(flow.metadata.pop(VIRTUAL_KEY), "access")
        except StoreError:
            flow.response = proxy_errors.error_response(
                503, "TPX-STORE-UNAVAILABLE", "The token store is unreachable.", 1.0)
            return
        if grant is None or grant.account not in self._pool.accounts:
            flow.response = proxy_errors.platform_token_error("OAU-213", "Token not found")
            return
        state = FlowTokenState(self._login_clients[grant.account], self._pool[grant.account])
        flow.metadata[FLOW_KEY] = state
        waiting = self._swap_credentials(flow, state)
        if waiting is not None:
            await waiting

    def _swap_credentials(self, flow: http.HTTPFlow,
                          state: FlowTokenState) -> Awaitable[None] | None:
        request = flow.request
        self._links.route(flow)
        if "access_token=" in request.path:
            request.query.pop("access_token", None)
        lease = state.account.try_lease()
        if lease is not None:
            self._inject(flow, state, lease)
            return None
        return self._inject_after_wait(flow, state)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        response = flow.response
        if state is not None:
            self._release(state)
            if response is not None and response.timestamp_start and state.generation >= 0:
                account = state.client.account
                histogram = self._upstream_histograms.get(account)
                if histogram is None:
                    histogram = self._metrics.upstream_seconds.labels(account)
                    self._upstream_histograms[account] = histogram
                histogram.observe(
                    max(0.0, response.timestamp_start - (flow.request.timestamp_end or 0)))
        if response is None or response.status_code == 401:
            return  # a 401 body is needed whole: it decides about the replay
        length = response.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > self._stream_threshold:
            response.stream = True

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        if state is None:
            self._count(flow, None)
            return None
        self._release(state)
        response = flow.response
        if response is None or response.status_code != 401 or state.replayed \
                or flow.request.stream:  # a streamed body is gone: it cannot be replayed
            if response is not None and response.status_code == 401 and flow.request.stream:
                code = token_error_code(401, response.raw_content or b"")
                if code is not None and state.generation >= 0:
                    state.account.note_rejected(state.generation, code)
            self._links.rewrite(flow)
            self._count(flow, state)
            return None
        code = token_error_code(401, response.raw_content or b"")
        if code is None or state.generation < 0:
            self._count(flow, state)
            return None
        self._metrics.token_errors.labels(state.client.account,
                                          bounded(code, TOKEN_ERROR_CODES)).inc()
        return self._replay(flow, state, code)

    def error(self, flow: http.HTTPFlow) -> None:
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        if state is not None:
            self._release(state)
        if flow.response is None and flow.error is not None \
                and "disconnect" not in flow.error.msg.lower():
            self._count(flow, state, 502)  # answered with mitmproxy's error page

    # -- helpers -------------------------------------------------------------------------

    def _inject(self, flow: http.HTTPFlow, state: FlowTokenState, lease: tuple[str, int]) -> None:
        token, state.generation = lease
        state.leased = True
        flow.request.headers["authorization"] = f"Bearer {token}"

    @staticmethod
    def _deadline(flow: http.HTTPFlow, state: FlowTokenState) -> float:
        """Token waits are bounded per request, from its arrival, across the replay too."""
        return state.account.deadline(flow.request.timestamp_start)

    @staticmethod
    def _refuse(flow: http.HTTPFlow, exc: TokenUnavailable) -> None:
        """Answer for the platform when no token can be had; ``Server-Timing`` says how long
        the request waited for one since it arrived."""
        flow.response = proxy_errors.error_response(exc.status, exc.code, exc.message,
                                                    exc.retry_after)
        waited_ms = max(0.0, time.time() - flow.request.timestamp_start) * 1000
        flow.response.headers["Server-Timing"] = f"token-wait;dur={waited_ms:.0f}"

    def _count(self, flow: http.HTTPFlow, state: FlowTokenState | None,
               status: int | None = None) -> None:
        """One answered request, labelled only with configured names and a status class."""
        if status is None:
            status = flow.response.status_code if flow.response is not None else 502
        if state is None:
            labels = (UNKNOWN_CLIENT, NO_ACCOUNT, status_class(status))
        else:
            labels = (state.client.name, state.client.account, status_class(status))
        counter = self._request_counters.get(labels)
        if counter is None:
            counter = self._request_counters[labels] = self._metrics.requests.labels(*labels)
        counter.inc()

    def _release(self, state: FlowTokenState) -> None:
        if state.leased:
            state.leased = False
            state.account.release(state.generation)

    async def _inject_after_wait(self, flow: http.HTTPFlow, state: FlowTokenState) -> None:
        try:
            lease = await state.account.lease(self._deadline(flow, state))
        except TokenUnavailable as exc:
            self._refuse(flow, exc)
            return
        if not flow.live:  # the client went away while we waited
            state.account.release(lease[1])
            return
        self._inject(flow, state, lease)

    async def _replay(self, flow: http.HTTPFlow, state: FlowTokenState, code: str) -> None:
        """Renew (coalesced by generation) and send the request again with the new token.
        If the replay's own, newer token died too (revoked or evicted meanwhile), once more:
        at most ``MAX_REPLAYS`` sends, all within the request's token-wait deadline."""
        state.replayed = True
        account = state.account
        name = account.account.name
        outcome = "failed"
        failed_generation, failed_code = state.generation, code
        try:
            for _ in range(MAX_REPLAYS):
                try:
                    token, generation = await account.rejected(
                        failed_generation, failed_code, self._deadline(flow, state))
                except TokenUnavailable as exc:
                    self._refuse(flow, exc)
                    log.warning("account %s: replay after %s failed: %s", name, failed_code,
                                exc.code, extra={"event": "replay_failed", "account": name,
                                                 "code": exc.code})
                    return
                try:
                    flow.response = await self._replayer.send(flow.request, token)
                except UpstreamUnreachable as exc:
                    flow.response = proxy_errors.error_response(
                        502, proxy_errors.UPSTREAM_UNREACHABLE,
                        f"The platform is unreachable: {exc}")
                    log.warning("account %s: replay after %s failed: upstream unreachable",
                                name, failed_code,
                                extra={"event": "replay_failed", "account": name})
                    return
                finally:
                    account.release(generation)
                log.debug("account %s: replayed %s %s after %s", name, flow.request.method,
                          flow.request.path.split("?", 1)[0], failed_code)
                again = token_error_code(flow.response.status_code,
                                         flow.response.raw_content or b"")
                if again is None:
                    outcome = "success"
                    self._links.rewrite(flow)
                    return
                self._metrics.token_errors.labels(name, bounded(again, TOKEN_ERROR_CODES)).inc()
                failed_generation, failed_code = generation, again
            log.warning("account %s: the replay got a token error again (%s)", name,
                        failed_code, extra={"event": "replay_failed", "account": name,
                                            "code": failed_code})
        finally:
            self._metrics.replays.labels(name, outcome).inc()
            self._count(flow, state)


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


def _connection_tokens(value: str) -> list[str]:
    """Header names a client lists in ``Connection`` (hop-by-hop: not forwarded)."""
    names = [t.strip().lower() for t in value.split(",") if t.strip()]
    return [n for n in names if n not in ("keep-alive", "close", "upgrade")]
