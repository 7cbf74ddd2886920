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
from urllib.parse import urlsplit

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState

from ..config import ClientConfig, Config, Secret
from ..ops.metrics import (
    NO_ACCOUNT,
    TOKEN_ERROR_CODES,
    UNKNOWN_CLIENT,
    Metrics,
    bounded,
    status_class,
)
from ..store import StoreError
from ..tokens.pool import AccountTokens, TokenPool, TokenUnavailable
from ..upstream.platform_errors import token_error_code_of
from ..upstream.replay_sender import Replayer, ReplayTooLarge
from ..upstream.token_endpoint import UpstreamUnreachable
from ..virtual.grants import VirtualTokens, looks_virtual
from ..virtual.login import LoginInterceptor, issued_account
from . import errors as proxy_errors
from .early_answer import refuse_at_headers
from .links import LinkRewriter
from .replay_buffer import ReplayBuffer
from .request_target import TargetRefused, is_own_authority, parse_target
from .throttle import BadKeyThrottle

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
OAUTH_ROUTE = "/restapi/oauth"  # routes compare lowercase, without a trailing slash
EMULATOR_ROUTE = "/_emulator"
LOGIN_FORM_LIMIT = 64 * 1024  # bytes: a login form is a few hundred


def login_client_name(account: str) -> str:
    return f"{account}-login"


@dataclass(slots=True)
class FlowTokenState:
    """What the addon remembers about one flow between its hooks."""

    client: ClientConfig
    account: AccountTokens
    generation: int = -1  # token generation injected; -1 before injection
    leased: bool = False  # holds a lease on ``generation`` in the pool
    replayed: bool = False
    buffered: int = 0  # body bytes reserved in the process's replay buffer


class TokenInjector:
    """Client identification, token injection and transparent replay."""

    def __init__(self, config: Config, pool: TokenPool, replayer: Replayer,
                 metrics: Metrics | None = None, login: LoginInterceptor | None = None,
                 virtual: VirtualTokens | None = None,
                 throttle: BadKeyThrottle | None = None,
                 buffer: ReplayBuffer | None = None) -> None:
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
        self._buffer = buffer or ReplayBuffer(config.proxy.replay_body_limit,
                                              config.proxy.replay_buffer_total)
        self._require_tls = config.proxy.tls_cert is not None
        self._public_netloc = urlsplit(config.proxy.public_url).netloc \
            if config.proxy.public_url else None
        self._throttle = throttle or BadKeyThrottle(config.proxy.bad_key_limit)
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
        refusal = self._guard(flow)
        if refusal is not None:
            refuse_at_headers(flow, refusal)
            return None
        if any(name.lower() in _SPOOFABLE_NAMES for name, _ in request.headers.fields):
            for name in SPOOFABLE_HEADERS:  # never let an app speak for the proxy
                request.headers.pop(name, None)
        for name in _connection_tokens(request.headers.get("connection", "")):
            request.headers.pop(name, None)  # hop-by-hop, listed by the client
        if flow.metadata.get(LOGIN_KEY):
            return None  # answered in `request`, once the (small) form is in
        key = _bearer(request.headers.get("authorization"))
        if key and self._login is not None and looks_virtual(key):
            return self._resolve_virtual(flow, key)
        client = self._client_of(key) if key else None
        if client is None:
            problem = ("The Bearer credential is not a configured client key" if key
                       else "No client key was sent")
            response = proxy_errors.error_response(
                401, proxy_errors.CLIENT_UNKNOWN,
                f"{problem}: send 'Authorization: Bearer <key>' with a key configured under "
                "[[clients]] in the tokenproxy config.")
            return self._refuse_client(flow, response, counted=bool(key))
        return self._admit(flow, FlowTokenState(client, self._pool[client.account]))

    def _guard(self, flow: http.HTTPFlow) -> http.Response | None:
        """What may not go on at all, decided on the request line and headers alone: plain
        HTTP where TLS is required, a target naming another host or spelled ambiguously, the
        emulator's admin routes, oversized login forms, OAuth routes the proxy does not serve.
        Leaves the normalised path in the request (see :mod:`.request_target`)."""
        request = flow.request
        if self._require_tls and not flow.client_conn.tls_established:
            return proxy_errors.error_response(
                400, "TPX-TLS-REQUIRED", "This proxy only accepts HTTPS: use https:// in the "
                "server URL (and treat any credential just sent in clear as exposed).")
        if request.method.upper() == "CONNECT":
            return proxy_errors.error_response(
                405, proxy_errors.BAD_TARGET, "CONNECT is not served: this is a reverse proxy "
                "to the platform, not a forward proxy.")
        if request.authority:  # absolute-form: origin-form upstream, and only for us
            if not is_own_authority(request.authority, flow.client_conn.sockname,
                                    self._public_netloc):
                return proxy_errors.error_response(
                    400, proxy_errors.BAD_TARGET, "The request target names another host: "
                    "send the path only (GET /restapi/... HTTP/1.1).")
            request.authority = ""
        try:
            target = parse_target(request.path)
        except TargetRefused as exc:
            return proxy_errors.error_response(400, proxy_errors.BAD_TARGET,
                                               f"Bad request target: {exc}.")
        if target.path != request.path:
            request.path = target.path
        route = target.route
        if route == EMULATOR_ROUTE or route.startswith(EMULATOR_ROUTE + "/"):
            return proxy_errors.error_response(
                404, proxy_errors.NOT_SERVED, "The emulator's admin routes are never served "
                "through the proxy.")
        if route == OAUTH_ROUTE or route.startswith(OAUTH_ROUTE + "/"):
            query = target.path.partition("?")[2]
            canonical = route + ("?" + query if query else "")
            if self._login is not None and LoginInterceptor.handles(canonical):
                request.path = canonical  # the interceptor matches the canonical spelling
                flow.metadata[LOGIN_KEY] = True
                return self._login_form_refusal(request)
            return proxy_errors.error_response(
                403, proxy_errors.OAUTH_MANAGED,
                "tokenproxy manages this account's OAuth tokens: do not log in through the "
                "proxy; send your client key as 'Authorization: Bearer <key>' on API calls.")
        return None

    @staticmethod
    def _login_form_refusal(request: http.Request) -> http.Response | None:
        """Login forms are small: refuse one beyond LOGIN_FORM_LIMIT before reading it."""
        length = request.headers.get("content-length", "")
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            return proxy_errors.error_response(
                411, proxy_errors.BODY_REFUSED, "Send the login form with a Content-Length.")
        if length.isdigit() and int(length) > LOGIN_FORM_LIMIT:
            return proxy_errors.error_response(
                413, proxy_errors.BODY_REFUSED,
                f"A login form is at most {LOGIN_FORM_LIMIT} bytes.")
        return None

    def _refuse_client(self, flow: http.HTTPFlow, response: http.Response,
                       counted: bool) -> Awaitable[None] | None:
        """Refuse an unknown credential. An address that keeps guessing waits a little longer
        each time, but only when no body follows: while a hook waits, mitmproxy queues what
        the client sends in memory, so a refusal with a body leaves at once (and closes)."""
        delay = self._throttle.delay(flow.client_conn.peername[0]) if counted else 0.0
        if delay <= 0 or _has_body(flow.request):
            refuse_at_headers(flow, response)
            return None
        return self._refuse_later(flow, response, delay)

    def _admit(self, flow: http.HTTPFlow, state: FlowTokenState) -> Awaitable[None] | None:
        flow.metadata[FLOW_KEY] = state
        if self._limit_body(flow, state):
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
        refuse_at_headers(flow, response)

    def _limit_body(self, flow: http.HTTPFlow, state: FlowTokenState) -> bool:
        """Bodies up to ``replay_body_limit`` are buffered (replayable) while the process-wide
        ``replay_buffer_total`` has room; others stream through and cannot be replayed after a
        token 401. True when the body streams."""
        headers = flow.request.headers
        length = headers.get("content-length", "")
        if "chunked" not in headers.get("transfer-encoding", "").lower() and length.isdigit():
            size = int(length)
            if size == 0 or self._buffer.admit(size):
                state.buffered = size
                return False
        elif not _has_body(flow.request):
            return False
        flow.request.stream = True
        return True

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            return None
        if flow.metadata.get(LOGIN_KEY) and self._login is not None:
            return self._login.answer(flow)
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        if state is None or state.generation >= 0:  # none, or swapped already (streamed)
            return None
        return self._swap_credentials(flow, state)

    async def _resolve_virtual(self, flow: http.HTTPFlow, key: str) -> None:
        """An app that logged in through the proxy: its virtual token names the account.
        Resolved at the request's headers, so a refusal never waits for the body."""
        assert self._virtual is not None
        try:
            grant, code = await self._virtual.resolve_access(key)
        except StoreError:
            refuse_at_headers(flow, proxy_errors.error_response(
                503, "TPX-STORE-UNAVAILABLE", "The token store is unreachable.", 1.0))
            return
        if grant is None or grant.account not in self._pool.accounts:
            expired = code == "OAU-210"
            refusal = proxy_errors.platform_token_error(
                "OAU-210" if expired else "OAU-213",
                "Token expired" if expired else "Token not found")
            waiting = self._refuse_client(flow, refusal, counted=not expired)
            if waiting is not None:
                await waiting
            return
        state = FlowTokenState(self._login_clients[grant.account], self._pool[grant.account])
        waiting = self._admit(flow, state)
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
            response.stream = self._links.stream_for(flow) or True

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        state: FlowTokenState | None = flow.metadata.get(FLOW_KEY)
        if state is None:
            self._count(flow, None, client=self._login_client_of(flow))
            return None
        self._release(state)
        response = flow.response
        if response is None or response.status_code != 401 or state.replayed \
                or flow.request.stream:  # a streamed body is gone: it cannot be replayed
            if response is not None and response.status_code == 401 and flow.request.stream:
                code = token_error_code_of(response)
                if code is not None and state.generation >= 0:
                    state.account.note_rejected(state.generation, code)
            self._links.rewrite(flow)
            self._count(flow, state)
            return None
        code = token_error_code_of(response)
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
            self._release_body(state)
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
        flow.response = proxy_errors.token_unavailable_response(exc)
        waited_ms = max(0.0, time.time() - flow.request.timestamp_start) * 1000
        flow.response.headers["Server-Timing"] = f"token-wait;dur={waited_ms:.0f}"

    def _login_client_of(self, flow: http.HTTPFlow) -> ClientConfig | None:
        """A successful login through the proxy counts for the account's login client."""
        if not flow.metadata.get(LOGIN_KEY) or flow.response is None:
            return None
        account = issued_account(flow.response)
        return self._login_clients.get(account) if account else None

    def _count(self, flow: http.HTTPFlow, state: FlowTokenState | None,
               status: int | None = None, client: ClientConfig | None = None) -> None:
        """One answered request, labelled only with configured names and a status class."""
        if status is None:
            status = flow.response.status_code if flow.response is not None else 502
        if state is not None:
            self._release_body(state)  # answered: the body is no longer needed for a replay
            client = state.client
        if client is None:
            labels = (UNKNOWN_CLIENT, NO_ACCOUNT, status_class(status))
        else:
            labels = (client.name, client.account, status_class(status))
        counter = self._request_counters.get(labels)
        if counter is None:
            counter = self._request_counters[labels] = self._metrics.requests.labels(*labels)
        counter.inc()

    def _release_body(self, state: FlowTokenState) -> None:
        if state.buffered:
            self._buffer.release(state.buffered)
            state.buffered = 0

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
        if _client_gone(flow):  # the app went away while we waited: send nothing
            state.account.release(lease[1])
            flow.kill()
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
                                proxy_errors.token_unavailable_code(exc),
                                extra={"event": "replay_failed", "account": name,
                                       "code": proxy_errors.token_unavailable_code(exc)})
                    return
                if _client_gone(flow):  # nobody waits: a retried POST must not go out twice
                    account.release(generation)
                    outcome = "abandoned"
                    log.info("account %s: %s %s not replayed: the app hung up", name,
                             flow.request.method, flow.request.path.split("?", 1)[0],
                             extra={"event": "replay_abandoned", "account": name})
                    flow.kill()
                    return
                try:
                    flow.response, held = await self._replayer.send(flow.request, token)
                    self._buffer.release(held)  # passed on as soon as this hook returns
                except UpstreamUnreachable as exc:
                    flow.response = proxy_errors.error_response(
                        502, proxy_errors.UPSTREAM_UNREACHABLE,
                        f"The platform is unreachable: {exc}")
                    log.warning("account %s: replay after %s failed: upstream unreachable",
                                name, failed_code,
                                extra={"event": "replay_failed", "account": name})
                    return
                except ReplayTooLarge:
                    flow.response = proxy_errors.error_response(
                        503, proxy_errors.REPLAY_TOO_LARGE, "The platform refused the token this "
                        "request carried; the proxy renewed it, but the answer is too large to "
                        "replay here: repeat the request.", 1.0)
                    return
                finally:
                    account.release(generation)
                log.debug("account %s: replayed %s %s after %s", name, flow.request.method,
                          flow.request.path.split("?", 1)[0], failed_code)
                again = token_error_code_of(flow.response)
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


def _has_body(request: http.Request) -> bool:
    length = request.headers.get("content-length", "")
    return "chunked" in request.headers.get("transfer-encoding", "").lower() \
        or (length != "" and length != "0")


def _client_gone(flow: http.HTTPFlow) -> bool:
    """The app closed its connection (its own timeout, a crash): nobody waits for an answer.
    While a hook runs mitmproxy only queues the close event, so ``flow.live`` cannot tell; the
    connection's state is set by the reader as soon as it sees EOF or a reset."""
    return not flow.client_conn.state & ConnectionState.CAN_READ


def _digest(key: str) -> bytes:
    # Look keys up by digest: the dict lookup then reveals nothing about the keys' bytes.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _connection_tokens(value: str) -> list[str]:
    """Header names a client lists in ``Connection`` (hop-by-hop: not forwarded)."""
    names = [t.strip().lower() for t in value.split(",") if t.strip()]
    return [n for n in names if n not in ("keep-alive", "close", "upgrade")]
