"""The token pool: one always-fresh token set per account, shared by every client of it.

The addon asks :meth:`AccountTokens.try_lease` for a token on every request (hot path: no
await, no I/O while the token is fresh) and falls back to :meth:`AccountTokens.lease` when a
renewal is due. Renewals are single-flight per account and numbered by *generation*: a 401 on
a request that carried generation ``g`` triggers a renewal only while ``g`` is current,
otherwise the request is replayed with the newer token. Refresh-ahead first *drains* the old
generation (new requests wait, in-flight ones finish) because the platform kills the old access
token the moment a refresh succeeds; that way steady traffic never sees a token 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..config import AccountConfig, Config
from ..ops.logs import remember
from ..ops.metrics import Metrics
from ..store import CorruptRecord, StoredTokens, StoreError, TokenStore
from ..store.base import RecordCodec
from ..store.crypto import TokenCipher
from ..store.memory import MemoryStore
from ..upstream.platform_errors import TokenEndpointError
from ..upstream.token_endpoint import TokenEndpoint, UpstreamUnreachable
from .budget import AuthBudget, AuthBudgets
from .token_set import TokenSet

log = logging.getLogger("tokenproxy.pool")

Lease = tuple[str, int]  # (access token, generation)


class AccountState(enum.StrEnum):
    IDLE = "idle"  # no token acquired yet
    HEALTHY = "healthy"
    REFRESHING = "refreshing"
    BACKING_OFF = "backing_off"
    REAUTH_REQUIRED = "reauth_required"
    MISCONFIGURED = "misconfigured"


class TokenUnavailable(Exception):
    """No token can be had for this account now; carries what the client is told."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass(frozen=True)
class PoolSettings:
    token_wait_timeout: float = 10.0  # how long a request waits for a renewal
    refresh_ahead: float = 60.0  # refresh this long before expiry (capped to a share of TTL)
    refresh_ahead_share: float = 0.04  # ... never more than this share of the token lifetime
    drain_timeout: float = 2.0  # longest wait for in-flight requests before a refresh-ahead
    keepalive_share: float = 0.25  # refresh idle accounts this share of refresh TTL early ...
    keepalive_max: float = 36 * 3600.0  # ... at most this early (an alert fires below 24 h)
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    misconfigured_backoff: float = 30.0  # wrong credentials: do not hammer the endpoint
    auth_budget_calls: int = 5  # token-endpoint calls per app (client id) ...
    auth_budget_window: float = 60.0  # ... per this many seconds; 0 calls = unlimited
    reauth_poll: float = 1.0  # how often a reauth_required account looks for a new session
    lock_lease: float = 6.0  # how long a crashed process can block an account's renewal
    store_retry: float = 1.0  # how soon renewals try an unreachable store again

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        proxy = config.proxy
        return cls(token_wait_timeout=proxy.token_wait_timeout,
                   refresh_ahead=proxy.refresh_ahead,
                   drain_timeout=proxy.drain_timeout,
                   auth_budget_calls=proxy.auth_budget_calls,
                   auth_budget_window=proxy.auth_budget_window,
                   lock_lease=config.store.lock_lease)

    @property
    def safe_budget_window(self) -> float:
        """The budget window with a margin for clock and latency skew against the platform."""
        return self.auth_budget_window * 1.02 + 0.5


class AccountTokens:
    """Token set, generation, in-flight leases and renewal of one account."""

    def __init__(self, account: AccountConfig, endpoint: TokenEndpoint, settings: PoolSettings,
                 store: TokenStore, budget: AuthBudget | None = None,
                 clock: Callable[[], float] = time.time, owner: str = "",
                 metrics: Metrics | None = None) -> None:
        self.account = account
        self._metrics = metrics or Metrics()
        self._endpoint = endpoint
        self._store = store
        self._owner = owner or _process_owner()
        self._budget = budget or AuthBudget(settings.auth_budget_calls,
                                            settings.safe_budget_window)
        self._settings = settings
        self._clock = clock
        self._tokens: TokenSet | None = None
        if account.grant == "refresh_token" and account.refresh_token:
            self._tokens = TokenSet("", 0.0, account.refresh_token.reveal(), None)
        self._code_spent = False  # an authorization code works once
        self.generation = 0
        self._access_dead = False  # the platform rejected the current generation
        self._refresh_at = 0.0
        self._keepalive_at = math.inf
        self._used = False  # a request leased the current generation
        self._inflight: dict[int, int] = {}
        self._renewal: asyncio.Task[None] | None = None
        self._pending: TokenSet | None = None  # obtained, not yet saved
        self._obtained_by = "refreshed"  # how the pending pair was obtained (metrics)
        self._checking = False  # a notification's store read is under way
        self._awaiting_store = False  # a renewal waits for the store (lock, newer pair)
        self._draining: tuple[int, asyncio.Event] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._failure: TokenUnavailable | None = None
        self._closed = False
        self.state = AccountState.IDLE
        self.state_since = clock()
        self.last_error: str = ""
        self.last_hint: str = ""
        self.last_refresh: float | None = None
        self.token_calls = 0

    async def start(self) -> None:
        """Adopt the stored session, if any: a restarted proxy logs in again only when the
        store has nothing usable."""
        name = self.account.name
        try:
            record = await self._store.load(name)
        except CorruptRecord as exc:
            self.last_error, self.last_hint = "stored tokens unreadable", str(exc)
            log.error("account %s: %s; the account will authenticate anew", name, exc)
            self.generation = await self._store_generation()
            return
        except StoreError as exc:
            self.last_error, self.last_hint = "store unavailable", str(exc)
            log.error("account %s: cannot read the store: %s", name, exc)
            return
        if record is None:
            return
        self._adopt(record.generation, record.tokens)
        log.info("account %s: reusing the stored session (generation %d)", name,
                 record.generation)

    async def _store_generation(self) -> int:
        try:
            return await self._store.generation(self.account.name)
        except StoreError:
            return self.generation

    def _adopt(self, generation: int, tokens: TokenSet) -> None:
        remember(tokens.access_token, tokens.refresh_token)
        self._tokens = tokens
        self.generation = generation
        self._code_spent = True  # a stored session supersedes the config's one-time code
        self._access_dead = False
        self._used = False
        self._failures = 0
        self._retry_at = 0.0
        self._failure = None
        self._set_state(AccountState.HEALTHY if tokens.refresh_alive(self._clock())
                        or tokens.access_alive(self._clock()) else AccountState.IDLE)
        self._schedule()

    # -- hot path ------------------------------------------------------------------------

    def try_lease(self) -> Lease | None:
        """The current token if it is fresh and no renewal is under way; else None."""
        tokens = self._tokens
        if tokens is None or self._renewal is not None or self._clock() >= self._refresh_at:
            return None
        return self._grant(tokens)

    def release(self, generation: int) -> None:
        """A request that leased ``generation`` got its answer (or failed)."""
        left = self._inflight.get(generation, 0) - 1
        if left > 0:
            self._inflight[generation] = left
            return
        self._inflight.pop(generation, None)
        if self._draining is not None and self._draining[0] == generation:
            self._draining[1].set()

    # -- slow path -----------------------------------------------------------------------

    def deadline(self, arrived: float) -> float:
        """When a request that arrived at ``arrived`` must stop waiting for a token."""
        return arrived + self._settings.token_wait_timeout

    async def lease(self, deadline: float | None = None) -> Lease:
        """A usable token, waiting for a renewal when one is due or under way — until
        ``deadline`` (default: ``token_wait_timeout`` from now)."""
        if deadline is None:
            deadline = self.deadline(self._clock())
        started = time.monotonic()
        try:
            return await self._lease(deadline)
        finally:
            self._metrics.token_wait.labels(self.account.name).observe(
                time.monotonic() - started)

    async def _lease(self, deadline: float) -> Lease:
        while True:
            fast = self.try_lease()
            if fast is not None:
                return fast
            if self._renewal is None:
                now = self._clock()
                if now < self._retry_at:
                    if not self._fallback_possible() and self._retry_at < deadline:
                        await asyncio.sleep(self._retry_at - now)  # back-off ends in time
                        continue
                    return self._fallback_or_raise()
                self._start_renewal(self._due_reason())
            renewal = self._renewal
            assert renewal is not None
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._timeout()
            try:
                await asyncio.wait_for(asyncio.shield(renewal), remaining)
            except TimeoutError:
                raise self._timeout() from None
            except TokenUnavailable:
                return self._fallback_or_raise()
            tokens = self._tokens
            if tokens is not None and not self._access_dead and tokens.access_alive(self._clock()):
                return self._grant(tokens)

    def needs_session(self) -> bool:
        """No usable session: never logged in, or a person must authorize it again."""
        tokens = self._tokens
        return (self.state is AccountState.REAUTH_REQUIRED or tokens is None
                or not (tokens.access_alive(self._clock()) or tokens.refresh_alive(self._clock())))

    def known_owner(self) -> str:
        return self._tokens.owner_id if self._tokens is not None else ""

    async def authorized(self, tokens: TokenSet) -> bool:
        """A person authorized this account (an app's authorization-code login through the
        proxy): save the session and serve it. False if it could not be saved."""
        name = self.account.name
        try:
            for _ in range(3):
                current = await self._store.generation(name)
                if await self._store.compare_and_set(name, current, tokens):
                    self._adopt(current + 1, tokens)
                    log.info("account %s: session authorized by an app's login; serving again",
                             name, extra={"event": "reauthorized", "account": name})
                    return True
        except StoreError as exc:
            log.error("account %s: could not save the authorized session: %s", name, exc)
        return False

    def note_rejected(self, generation: int, code: str) -> None:
        """A token 401 on a request that cannot be replayed (streamed body): renew for the
        next requests, without waiting."""
        if generation == self.generation and self._renewal is None:
            self._access_dead = True
            self._refresh_at = 0.0
            if self._clock() >= self._retry_at:
                self._start_renewal(f"rejected:{code}")

    async def rejected(self, generation: int, code: str, deadline: float | None = None) -> Lease:
        """The platform answered a token 401 (``code``) to a request made with ``generation``:
        renew once if that generation is still current, then hand out the newer token."""
        if generation == self.generation:
            if code == "OAU-213" and not self._access_dead:
                self._metrics.sessions_lost.labels(self.account.name,
                                                   "revoked_or_evicted").inc()
            self._access_dead = True
            self._refresh_at = 0.0
            if self._renewal is None:
                if self._clock() >= self._retry_at:
                    self._start_renewal(f"rejected:{code}")
            elif self._draining is not None and self._draining[0] == generation:
                self._draining[1].set()  # no point waiting: the token is dead already
        return await self.lease(deadline)

    async def owner_id(self) -> str:
        """The platform user id of the account (logs in first if it never did)."""
        tokens = self._tokens
        if tokens is None or not tokens.owner_id:
            _, generation = await self.lease()
            self.release(generation)
            tokens = self._tokens
        return tokens.owner_id if tokens is not None else ""

    def scope(self) -> str:
        return self._tokens.scope if self._tokens is not None else ""

    def can_serve(self) -> bool:
        """A request arriving now would get a token without waiting for the platform."""
        return self._fallback_possible()

    def snapshot(self) -> dict[str, object]:
        """The account's state for status displays (no token values)."""
        now = self._clock()
        tokens = self._tokens
        access_left = refresh_left = None
        if tokens is not None:
            if tokens.access_token and not self._access_dead:
                access_left = max(0.0, tokens.access_expires_at - now)
            if tokens.refresh_token:
                refresh_left = (None if tokens.refresh_expires_at is None
                                else max(0.0, tokens.refresh_expires_at - now))
        return {
            "account": self.account.name,
            "grant": self.account.grant,
            "state": self.state.value,
            "state_since": self.state_since,
            "generation": self.generation,
            "access_expires_in": access_left,
            "refresh_expires_in": refresh_left,
            "live_sessions": 1 if tokens is not None and (access_left or refresh_left) else 0,
            "max_live_tokens": self.account.max_live_tokens,
            "last_refresh": self.last_refresh,
            "last_error": self.last_error or None,
            "hint": self.last_hint or None,
            "token_calls": self.token_calls,
            "in_flight": sum(self._inflight.values()),
        }

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._renewal is not None:
            self._renewal.cancel()

    # -- renewal -------------------------------------------------------------------------

    def _grant(self, tokens: TokenSet) -> Lease:
        generation = self.generation
        self._inflight[generation] = self._inflight.get(generation, 0) + 1
        self._used = True
        return tokens.access_token, generation

    def _due_reason(self) -> str:
        tokens = self._tokens
        if tokens is None or not tokens.access_token:
            return "initial"
        if self._access_dead or not tokens.access_alive(self._clock()):
            return "expired"
        return "ahead"

    def _start_renewal(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._renew(reason),
                                                      name=f"renew:{self.account.name}")
        self._renewal = task
        task.add_done_callback(_retrieve_exception)

    async def _renew(self, reason: str) -> None:
        previous_state = self.state
        heartbeat: asyncio.Task[None] | None = None
        try:
            if reason == "ahead":
                await self._drain(self.generation)
            record = await self._lock_or_newer()
            if record is None:
                # "refreshing" from here: waiting for the store or a lock is not refreshing
                self._set_state(AccountState.REFRESHING)
                heartbeat = self._keep_lock()
                try:
                    record = await self._persist(await self._obtain(reason))
                except _Superseded as exc:
                    record = exc.record
            outcome = "adopted" if record.tokens is not self._pending else self._obtained_by
            name = self.account.name
            log.info("account %s: renewal %s (reason %s), generation %d", name, outcome, reason,
                     record.generation,
                     extra={"event": "renewal", "account": name, "reason": reason,
                            "state": outcome, "generation": record.generation})
            self._metrics.renewals.labels(name, outcome).inc()
        except TokenUnavailable as exc:
            self._metrics.renewals.labels(self.account.name, "failed").inc()
            self._failure = exc
            if self.state in (AccountState.REFRESHING, AccountState.HEALTHY, AccountState.IDLE):
                self._set_state(AccountState.BACKING_OFF)
            raise
        except asyncio.CancelledError:
            self._set_state(previous_state)
            raise
        else:
            remember(record.tokens.access_token, record.tokens.refresh_token)
            self.generation = record.generation
            self._tokens = record.tokens
            self._access_dead = False
            self._used = False
            self._failures = 0
            self._retry_at = 0.0
            self._failure = None
            self.last_refresh = self._clock()
            self.last_error = self.last_hint = ""
            self._set_state(AccountState.HEALTHY)
        finally:
            self._pending = None
            if heartbeat is not None:
                heartbeat.cancel()
                await self._release_lock()
            self._draining = None
            self._renewal = None
            self._schedule()

    async def _newer_in_store(self) -> StoredTokens | None:
        """The pair another process stored since we last read or wrote, if it is readable,
        alive and not older than ours (a lower generation means the store was reset).
        StoreError propagates: the caller decides what an unreachable store means."""
        name = self.account.name
        if await self._store.generation(name) == self.generation:
            return None
        try:
            record = await self._store.load(name)
        except CorruptRecord as exc:
            self.last_error, self.last_hint = "stored tokens unreadable", str(exc)
            log.error("account %s: %s; it will be overwritten by the next renewal", name, exc)
            return None
        if record is None or record.generation == self.generation:
            return None
        now, ours = self._clock(), self._tokens
        theirs = record.tokens
        if not (theirs.access_alive(now) or theirs.refresh_alive(now)):
            return None
        if ours is not None and theirs.issued_at < ours.issued_at:
            return None  # the store lost our latest write; the next persist restores it
        return record

    async def _newer_in_store_or_none(self) -> StoredTokens | None:
        try:
            return await self._newer_in_store()
        except StoreError as exc:
            log.warning("account %s: reading the store: %s", self.account.name, exc)
            return None

    async def _lock_or_newer(self) -> StoredTokens | None:
        """Hold the account's renewal lock (None), or return the newer tokens another process
        stored meanwhile. Processes sharing a store thus renew one at a time, once. Without a
        reachable store there is no renewal: a pair that cannot be saved could be lost."""
        name, lease = self.account.name, self._settings.lock_lease
        give_up = self._clock() + lease + 1.0  # a dead holder's lease runs out
        self._awaiting_store = True
        started = time.monotonic()
        try:
            while True:
                newer = await self._newer_in_store()
                if newer is not None:
                    return newer
                if await self._store.acquire_lock(name, self._owner, lease):
                    newer = await self._newer_in_store()
                    if newer is not None:
                        await self._release_lock()
                    return newer
                if self._clock() >= give_up:
                    raise TokenUnavailable(503, "TPX-TOKEN-TIMEOUT",
                                           "Another proxy process holds this account's renewal "
                                           "lock and has not finished.", 1.0)
                await asyncio.sleep(0.05)
        except StoreError as exc:
            raise self._store_down(exc) from None
        finally:
            self._awaiting_store = False
            self._metrics.store_lock_wait.labels(self._store.backend).observe(
                time.monotonic() - started)

    def _store_down(self, exc: StoreError) -> TokenUnavailable:
        if self.last_error != "store unavailable":
            log.error("account %s: the store is unreachable, renewals wait for it: %s",
                      self.account.name, exc)
        self.last_error, self.last_hint = "store unavailable", str(exc)
        self._retry_at = self._clock() + self._settings.store_retry
        return TokenUnavailable(503, "TPX-STORE-UNAVAILABLE",
                                "The token store is unreachable and the current token is no "
                                "longer valid; the proxy renews tokens only where it can save "
                                "them.", self._settings.store_retry)

    def _keep_lock(self) -> asyncio.Task[None]:
        """Extend the renewal lock while we hold it (a slow token endpoint must not let the
        lease run out under us); cancelled when the renewal ends."""
        name, lease = self.account.name, self._settings.lock_lease

        async def beat() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    if not await self._store.acquire_lock(name, self._owner, lease):
                        log.warning("account %s: lost the renewal lock to another process",
                                    name)
                        return
                except StoreError as exc:
                    log.warning("account %s: extending the renewal lock: %s", name, exc)

        task = asyncio.get_running_loop().create_task(beat(), name=f"lock:{name}")
        task.add_done_callback(_retrieve_exception)
        return task

    async def _release_lock(self) -> None:
        try:
            await self._store.release_lock(self.account.name, self._owner)
        except StoreError as exc:
            log.warning("account %s: releasing the store lock: %s", self.account.name, exc)

    async def _persist(self, tokens: TokenSet) -> StoredTokens:
        """Write the new pair to the store before anyone uses it. Returns what to use: our
        pair with its generation or, if another process stored a pair meanwhile (our lock ran
        out), theirs — ours is then revoked, so it holds no session slot."""
        self._pending = tokens
        name = self.account.name
        based_on = expected = self.generation
        try:
            for _ in range(3):
                if await self._store.compare_and_set(name, expected, tokens):
                    return StoredTokens(expected + 1, tokens)
                try:
                    stored = await self._store.load(name)
                except CorruptRecord:
                    stored = None
                now = self._clock()
                if stored is not None and stored.tokens.refresh_alive(now) \
                        and stored.tokens.issued_at >= tokens.issued_at - 60.0:
                    self._discard(tokens, stored.tokens)
                    return stored
                expected = await self._store.generation(name)  # dead, unreadable or reset
        except StoreError as exc:
            # The platform has already rotated: the new pair is the only one that works.
            # Serve it from memory and keep trying to save it.
            log.error("account %s: could not save the new tokens (%s); serving them from "
                      "memory and retrying the store", name, exc)
            self._save_later(tokens)
            return StoredTokens(based_on + 1, tokens)
        log.error("account %s: store generation keeps moving; using the new tokens unsaved",
                  name)
        return StoredTokens(expected + 1, tokens)

    def _discard(self, ours: TokenSet, kept: TokenSet) -> None:
        """Revoke a pair we obtained but will not use (another process's pair won)."""
        if ours.session_id and ours.session_id == kept.session_id:
            return  # same session (grace replay): revoking would kill the kept pair too
        token = ours.refresh_token or ours.access_token
        log.warning("account %s: another process stored a pair meanwhile; revoking ours",
                    self.account.name)

        async def revoke() -> None:
            with contextlib.suppress(Exception):
                await self._endpoint.revoke(self.account, token)

        asyncio.get_running_loop().create_task(revoke()).add_done_callback(_retrieve_exception)

    def _save_later(self, tokens: TokenSet) -> None:
        """Retry saving a pair the store refused while it was down, until it is saved or
        superseded."""
        name = self.account.name

        async def retry() -> None:
            delay = self._settings.store_retry
            while not self._closed and (self._tokens is tokens or self._pending is tokens):
                await asyncio.sleep(delay)
                try:
                    newer = await self._newer_in_store()
                    if newer is None:
                        stored = await self._store.generation(name)
                        if await self._store.compare_and_set(name, stored, tokens):
                            if self._tokens is tokens:
                                self.generation = stored + 1
                            log.info("account %s: the new tokens are saved now", name)
                            return
                        continue
                except StoreError:
                    delay = min(delay * 2, 10.0)
                    continue
                if self._renewal is None:
                    self._discard(tokens, newer.tokens)
                    self._adopt(newer.generation, newer.tokens)
                return

        asyncio.get_running_loop().create_task(retry()).add_done_callback(_retrieve_exception)

    async def _drain(self, generation: int) -> None:
        """Let requests using ``generation`` finish before the refresh kills their token."""
        if not self._inflight.get(generation):
            return
        tokens = self._tokens
        assert tokens is not None
        budget = min(self._settings.drain_timeout,
                     tokens.access_expires_at - self._clock() - 0.02)
        if budget <= 0:
            return
        event = asyncio.Event()
        self._draining = (generation, event)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), budget)

    async def _obtain(self, reason: str) -> TokenSet:
        """New tokens: refresh while the refresh token lives, else log in with the grant."""
        account = self.account
        tokens = self._tokens
        now = self._clock()
        session_gone = reason == "rejected:OAU-213" and account.can_login
        # A new login happens only once the held session is known dead (refresh refused, or
        # OAU-213), so re-authentication never adds a session beyond the account's budget.
        try:
            if tokens is not None and tokens.refresh_alive(now) and not session_gone:
                try:
                    self._spend_budget()
                    self._obtained_by = "refreshed"
                    return await self._endpoint.refresh(account, tokens.refresh_token or "")
                except TokenEndpointError as exc:
                    if not exc.refresh_token_dead:
                        raise
                    newer = await self._newer_in_store_or_none()
                    if newer is not None:  # another process rotated it: not dead, just old
                        raise _Superseded(newer) from None
                    self._metrics.sessions_lost.labels(account.name, "refresh_token_dead").inc()
                    log.warning("account %s: refresh token is dead (%s); logging in again",
                                account.name, exc.code or exc.error)
            if account.can_login or (account.grant == "authorization_code"
                                     and not self._code_spent):
                self._spend_budget()
                self._code_spent = account.grant == "authorization_code"
                self._obtained_by = "logged_in"
                tokens = await self._endpoint.login(account)
                log.info("account %s: new session (%s grant, reason %s)", account.name,
                         account.grant, reason)
                return tokens
            self.last_error = "refresh token dead"
            self.last_hint = (f"account {account.name} uses the {account.grant} grant and its "
                              "refresh token no longer works: a person must authorize it again "
                              f"(tokenproxy authorize {account.name})")
            self._set_state(AccountState.REAUTH_REQUIRED)
            self._retry_at = math.inf
            log.error("account %s: reauthorization required: %s", account.name, self.last_hint,
                      extra={"event": "reauth_required", "account": account.name})
            raise TokenUnavailable(503, "TPX-REAUTH-REQUIRED", self.last_hint)
        except TokenEndpointError as exc:
            raise self._endpoint_failure(exc) from None
        except UpstreamUnreachable as exc:
            self._back_off(None)
            self.last_error, self.last_hint = "upstream unreachable", str(exc)
            log.warning("account %s: %s", account.name, exc)
            raise TokenUnavailable(502, "TPX-UPSTREAM-UNREACHABLE",
                                   f"The platform is unreachable: {exc}",
                                   self._retry_at - self._clock()) from None

    def _spend_budget(self) -> None:
        """Count a token-endpoint call against the app's budget, or refuse to make it."""
        wait = self._budget.reserve()
        if wait > 0:
            self._retry_at = self._clock() + wait
            self.last_error = "auth budget exhausted"
            self.last_hint = (f"the proxy allows itself {self._settings.auth_budget_calls} "
                              f"token calls per {self._settings.auth_budget_window:g} s for "
                              "this app, like the platform's auth rate limit")
            log.warning("account %s: token-call budget exhausted; next call in %.1f s",
                        self.account.name, wait)
            raise TokenUnavailable(503, "TPX-AUTH-RATE-LIMITED",
                                   "The proxy has used this app's budget of token calls; it "
                                   "will renew the token when the budget allows.", wait)
        self.token_calls += 1

    def _endpoint_failure(self, exc: TokenEndpointError) -> TokenUnavailable:
        account = self.account
        self.last_error = exc.code or exc.error or f"HTTP {exc.status}"
        cause_changed = self.last_hint != exc.hint
        self.last_hint = exc.hint
        if exc.rate_limited:
            self._back_off(exc.retry_after)
            log.warning("account %s: token endpoint rate limit (%s); backing off %.0f s",
                        account.name, exc.code or "429", self._retry_at - self._clock())
            return TokenUnavailable(503, "TPX-AUTH-RATE-LIMITED",
                                    "The platform's token endpoint is rate limiting this app; "
                                    "the proxy is backing off.", self._retry_at - self._clock())
        if exc.status < 500 and exc.error in ("invalid_client", "unauthorized_client",
                                               "invalid_grant", "invalid_request"):
            self._back_off(self._settings.misconfigured_backoff)
            self._set_state(AccountState.MISCONFIGURED)
            if cause_changed:
                log.error("account %s: token endpoint refused the account's credentials: %s — "
                          "hint: %s", account.name, exc, exc.hint)
            return TokenUnavailable(503, "TPX-ACCOUNT-MISCONFIGURED",
                                    f"The platform refused account {account.name!r}'s "
                                    f"credentials ({self.last_error}): {exc.hint}",
                                    self._retry_at - self._clock())
        self._back_off(exc.retry_after)
        log.warning("account %s: token endpoint failed: %s", account.name, exc)
        return TokenUnavailable(502, "TPX-TOKEN-ENDPOINT-FAILED",
                                f"The platform's token endpoint failed ({self.last_error}).",
                                self._retry_at - self._clock())

    def _back_off(self, at_least: float | None) -> None:
        self._failures += 1
        delay = min(self._settings.backoff_max,
                    self._settings.backoff_base * 2 ** (self._failures - 1))
        delay *= random.uniform(0.75, 1.0)
        if at_least is not None:
            delay = max(delay, at_least)
        self._retry_at = self._clock() + delay

    def _fallback_possible(self) -> bool:
        tokens = self._tokens
        return (tokens is not None and not self._access_dead
                and tokens.access_alive(self._clock()))

    def _fallback_or_raise(self) -> Lease:
        """While renewals fail, keep serving the old token as long as it is valid."""
        tokens = self._tokens
        if tokens is not None and self._fallback_possible():
            return self._grant(tokens)
        failure = self._failure or TokenUnavailable(503, "TPX-TOKEN-UNAVAILABLE",
                                                    "No token is available for this account.")
        if failure.retry_after is not None and math.isfinite(self._retry_at):
            failure.retry_after = max(1.0, self._retry_at - self._clock())
        raise failure

    def _timeout(self) -> TokenUnavailable:
        if self._awaiting_store:  # the renewal is stuck on the store: say so
            return TokenUnavailable(503, "TPX-STORE-UNAVAILABLE",
                                    "The token store is not answering and the current token "
                                    "is no longer valid; the proxy renews tokens only where "
                                    "it can save them.", self._settings.store_retry)
        return TokenUnavailable(503, "TPX-TOKEN-TIMEOUT",
                                f"Timed out after {self._settings.token_wait_timeout:g} s waiting "
                                f"for a token for account {self.account.name!r}.", 1.0)

    def _set_state(self, state: AccountState) -> None:
        if state is not self.state:
            log.info("account %s: state %s -> %s", self.account.name, self.state, state,
                     extra={"event": "state_change", "account": self.account.name,
                            "state": state.value, "previous_state": self.state.value})
            self.state = state
            self.state_since = self._clock()

    # -- scheduling ----------------------------------------------------------------------

    def _schedule(self) -> None:
        """Arm the timer for the next refresh-ahead, keep-alive or retry."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self.state is AccountState.REAUTH_REQUIRED:
            self._timer = loop.call_later(self._settings.reauth_poll, self._poll_reauthorized)
            return
        tokens = self._tokens
        if tokens is None or not math.isfinite(self._retry_at):
            return
        settings = self._settings
        if tokens.access_token and not self._access_dead:
            margin = min(settings.refresh_ahead,
                         max(0.05, tokens.access_lifetime * settings.refresh_ahead_share))
            self._refresh_at = tokens.access_expires_at - margin * random.uniform(1.0, 1.2)
        else:
            self._refresh_at = 0.0
        if tokens.refresh_expires_at is not None:
            lifetime = tokens.refresh_expires_at - tokens.issued_at
            margin = min(settings.keepalive_max, lifetime * settings.keepalive_share)
            self._keepalive_at = tokens.refresh_expires_at - margin
        else:
            self._keepalive_at = math.inf
        due = min(self._keepalive_at, max(self._refresh_at, self._retry_at))
        if math.isfinite(due):
            delay = max(0.0, due - self._clock())
            self._timer = loop.call_later(delay, self._on_timer)

    def _poll_reauthorized(self) -> None:
        self._timer = None
        if self._renewal is None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._check_reauthorized())
            task.add_done_callback(_retrieve_exception)

    async def _check_reauthorized(self) -> None:
        """While reauth_required: has `tokenproxy authorize` stored a new session?"""
        newer = await self._newer_in_store_or_none()
        if newer is not None and self.state is AccountState.REAUTH_REQUIRED:
            log.info("account %s: new session authorized; serving again", self.account.name,
                     extra={"event": "reauthorized", "account": self.account.name})
            self._adopt(newer.generation, newer.tokens)
            return
        if self.state is AccountState.REAUTH_REQUIRED:
            self._schedule()

    def notice(self, generation: int) -> None:
        """Another process wrote ``generation`` of this account (0: maybe, re-read): adopt
        it now rather than on the next 401."""
        if self._closed or self._checking or self._renewal is not None \
                or generation == self.generation:
            return
        self._checking = True

        async def check() -> None:
            try:
                newer = await self._newer_in_store_or_none()
                if newer is not None and self._renewal is None and not self._closed:
                    log.info("account %s: adopted generation %d that another process stored",
                             self.account.name, newer.generation)
                    self._adopt(newer.generation, newer.tokens)
            finally:
                self._checking = False

        asyncio.get_running_loop().create_task(check()).add_done_callback(_retrieve_exception)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._renewal is not None:
            return
        now = self._clock()
        if now < self._retry_at:
            self._schedule()
            return
        if now >= self._keepalive_at:
            self._start_renewal("keepalive")
        elif self._used and now >= self._refresh_at:
            self._start_renewal("ahead")
        elif self._refresh_at > now:
            self._schedule()
        elif math.isfinite(self._keepalive_at):
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, self._keepalive_at - now), self._on_timer)


class TokenPool:
    """All accounts of one proxy process."""

    def __init__(self, accounts: dict[str, AccountTokens],
                 store: TokenStore | None = None) -> None:
        self.accounts = accounts
        self._store = store

    @classmethod
    def build(cls, config: Config, endpoint: TokenEndpoint, store: TokenStore | None = None,
              settings: PoolSettings | None = None,
              metrics: Metrics | None = None) -> TokenPool:
        settings = settings or PoolSettings.from_config(config)
        store = store or MemoryStore(RecordCodec(TokenCipher(None)))
        budgets = AuthBudgets(settings.auth_budget_calls, settings.safe_budget_window)
        owner = _process_owner()
        metrics = metrics or Metrics()
        return cls({a.name: AccountTokens(a, endpoint, settings, store,
                                          budgets.for_client(a.client_id), owner=owner,
                                          metrics=metrics)
                    for a in config.accounts}, store)

    def __getitem__(self, name: str) -> AccountTokens:
        return self.accounts[name]

    async def start(self) -> None:
        for account in self.accounts.values():
            await account.start()
        if self._store is not None:
            await self._store.watch(self._stored)

    def _stored(self, account: str, generation: int) -> None:
        """A store notification: ``account`` has a new ``generation`` ("" = all, maybe)."""
        if not account:
            for tokens in self.accounts.values():
                tokens.notice(0)
        elif account in self.accounts:
            self.accounts[account].notice(generation)

    def close(self) -> None:
        for account in self.accounts.values():
            account.close()


class _Superseded(Exception):
    """Another process stored a newer pair while we renewed: use theirs."""

    def __init__(self, record: StoredTokens) -> None:
        super().__init__(record.generation)
        self.record = record


def _process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
