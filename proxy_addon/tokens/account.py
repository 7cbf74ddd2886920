"""One account's tokens as the gateway sees them: the current token set and its *generation*,
leases of in-flight requests per generation, drain before a refresh-ahead, and the state
machine (:class:`~.states.AccountState`).

The gateway asks :meth:`AccountTokens.try_lease` on every request (hot path: no await, no I/O
while the token is fresh) and falls back to :meth:`AccountTokens.lease` when a renewal is due.
Renewals (:mod:`.renewal`) are single-flight per account and numbered by generation: a 401 on
a request that carried generation ``g`` triggers a renewal only while ``g`` is current,
otherwise the request is replayed with the newer token. Refresh-ahead (:mod:`.schedule`) first
drains the old generation (new requests wait, in-flight ones finish) because the platform kills
the old access token the moment a refresh succeeds. Deadlines are monotonic; a token set's
expiry is wall time, read only where it is compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import socket
import uuid

from ..config import AccountConfig
from ..store.base import CorruptRecord, StoreError, TokenStore
from .budget import AuthBudget
from .clock import Clock, SystemClock, Timer, monotonic_at, within
from .failures import Reason, TokenUnavailable
from .ports import NullObserver, Observer, Platform
from .renewal import Renewal, new_epoch
from .schedule import Scheduling
from .settings import PoolSettings
from .states import AccountState
from .token_set import TokenSet

log = logging.getLogger("tokenproxy.pool")

Lease = tuple[str, int]  # (access token, generation)


class AccountTokens(Renewal, Scheduling):
    """Token set, generation, in-flight leases and renewal of one account."""

    def __init__(self, account: AccountConfig, platform: Platform, settings: PoolSettings,
                 store: TokenStore, budget: AuthBudget | None = None,
                 clock: Clock | None = None, owner: str = "",
                 observer: Observer | None = None, rng: random.Random | None = None) -> None:
        self.account = account
        self._name = account.name
        self._clock = clock = clock or SystemClock()
        self._observer = observer or NullObserver()
        self._platform = platform
        self._store = store
        self._owner = owner or process_owner()
        self._budget = budget or AuthBudget(settings.auth_budget_calls,
                                            settings.safe_budget_window, clock.monotonic)
        self._settings = settings
        self._rng = rng or random.Random()
        self._tokens: TokenSet | None = None
        if account.grant == "refresh_token" and account.refresh_token:
            self._tokens = TokenSet("", 0.0, account.refresh_token.reveal(), None)
        self._code_spent = False  # an authorization code works once
        self.generation = 0
        self._access_dead = False  # the platform rejected the current generation
        self._refresh_at = 0.0  # monotonic
        self._keepalive_at = math.inf  # monotonic
        # When the current access and refresh tokens die, on the monotonic clock: fixed once
        # when a set is obtained (from the instant its call was sent) or adopted, so a wall
        # clock step afterwards moves no deadline (issue 15.5)
        self._access_until = 0.0
        self._refresh_until = math.inf if self._tokens is not None else 0.0  # config's token
        self._sent_at = 0.0  # monotonic: when the call that obtained the pending pair was sent
        self._epoch = ""  # the store record lineage of the current set (TokenSet.epoch)
        self._used = False  # a request leased the current generation
        self._inflight: dict[int, int] = {}
        self._renewal: asyncio.Task[None] | None = None
        self._saving: asyncio.Task[None] | None = None  # a pair the store must still get
        self._pending: TokenSet | None = None  # obtained, not yet saved
        self._obtained_by = "refreshed"  # how the pending pair was obtained (metrics)
        self._checking = False  # a notification's store read is under way
        self._notice_again = False  # a notification came while that read was under way
        self._waiting_for = ""  # what a renewal waits for: "store" (a call) or "holder"
        self._lock_lost = False  # the renewal lock lapsed or was taken while we held it
        self._remote_drain = -1  # generation another process announced it is rotating
        self._draining: tuple[int, asyncio.Event] | None = None
        self._timer: Timer | None = None
        self._failures = 0
        self._retry_at = 0.0  # monotonic
        self._failure: TokenUnavailable | None = None
        self._closed = False
        self._changed = _unchanged  # the pool's hook (see TokenPool._rotation_near)
        self.state = AccountState.IDLE
        self.state_since = clock.wall()  # Unix time, for status displays
        self.last_error: str = ""
        self.last_hint: str = ""
        self.last_refresh: float | None = None  # Unix time
        self.token_calls = 0

    async def start(self) -> None:
        """Adopt the stored session, if any: a restarted proxy logs in again only when the
        store has nothing usable."""
        name = self._name
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
            return await self._store.generation(self._name)
        except StoreError:
            return self.generation

    def _adopt(self, generation: int, tokens: TokenSet, sent_at: float | None = None) -> None:
        """Make ``tokens`` (stored as ``generation``) the current set. ``sent_at``: the
        monotonic instant the call that obtained them was sent (None: read from the store, so
        their expiry is converted from wall time once, now)."""
        self._observer.secrets(tokens.access_token, tokens.refresh_token)
        self._tokens = tokens
        self._anchor(tokens, sent_at)
        self.generation = generation
        self._epoch = tokens.epoch
        if self._remote_drain <= generation:
            self._remote_drain = -1
        self._code_spent = True  # a stored session supersedes the config's one-time code
        self._access_dead = False
        self._used = False
        self._failures = 0
        self._retry_at = 0.0
        self._failure = None
        self._set_state(AccountState.HEALTHY if self._refresh_alive()
                        or self._access_alive() else AccountState.IDLE)
        self._schedule()

    def _anchor(self, tokens: TokenSet, sent_at: float | None) -> None:
        clock = self._clock
        if sent_at is not None:  # lifetimes as the platform gave them, from the send
            self._access_until = sent_at + max(0.0, tokens.access_expires_at - tokens.issued_at)
            self._refresh_until = (math.inf if tokens.refresh_expires_at is None
                                   else sent_at + tokens.refresh_expires_at - tokens.issued_at)
        else:
            self._access_until = monotonic_at(clock, tokens.access_expires_at)
            self._refresh_until = (math.inf if tokens.refresh_expires_at is None
                                   else monotonic_at(clock, tokens.refresh_expires_at))

    def _access_alive(self) -> bool:
        tokens = self._tokens
        return (tokens is not None and bool(tokens.access_token)
                and self._clock.monotonic() < self._access_until)

    def _refresh_alive(self) -> bool:
        tokens = self._tokens
        return (tokens is not None and bool(tokens.refresh_token)
                and self._clock.monotonic() < self._refresh_until)

    # -- hot path ------------------------------------------------------------------------

    def try_lease(self) -> Lease | None:
        """The current token if it is fresh and no renewal is under way; else None."""
        tokens = self._tokens
        if tokens is None or self._renewal is not None \
                or self._clock.monotonic() >= self._refresh_at:
            return None
        if self._remote_drain == self.generation:
            return None  # another process is about to rotate it: wait for the new one
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
        """When (monotonic) a request that arrived at ``arrived`` (Unix time, as the gateway
        timestamps requests) must stop waiting for a token."""
        clock = self._clock
        return clock.monotonic() - (clock.wall() - arrived) + self._settings.token_wait_timeout

    async def lease(self, deadline: float | None = None) -> Lease:
        """A usable token, waiting for a renewal when one is due or under way — until
        ``deadline`` (monotonic; default: ``token_wait_timeout`` from now)."""
        started = self._clock.monotonic()
        if deadline is None:
            deadline = started + self._settings.token_wait_timeout
        try:
            return await self._lease(deadline)
        finally:
            self._observer.token_wait(self._name, self._clock.monotonic() - started)

    async def _lease(self, deadline: float) -> Lease:
        clock = self._clock
        while True:
            fast = self.try_lease()
            if fast is not None:
                return fast
            if self._renewal is None:
                now = clock.monotonic()
                if now < self._retry_at:
                    if not self._fallback_possible() and self._retry_at < deadline:
                        await clock.sleep(self._retry_at - now)  # back-off ends in time
                        continue
                    return self._fallback_or_raise()
                self._start_renewal(self._due_reason())
            renewal = self._renewal
            assert renewal is not None
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise self._timeout()
            try:
                await within(clock, asyncio.shield(renewal), remaining)
            except TimeoutError:
                raise self._timeout() from None
            except TokenUnavailable:
                return self._fallback_or_raise()
            tokens = self._tokens
            if tokens is not None and not self._access_dead and self._access_alive() \
                    and self._remote_drain != self.generation:
                return self._grant(tokens)

    def needs_session(self) -> bool:
        """No usable session: never logged in, or a person must authorize it again."""
        return (self.state is AccountState.REAUTH_REQUIRED or self._tokens is None
                or not (self._access_alive() or self._refresh_alive()))

    def known_owner(self) -> str:
        return self._tokens.owner_id if self._tokens is not None else ""

    async def authorized(self, tokens: TokenSet) -> bool:
        """A person authorized this account (an app's authorization-code login through the
        proxy): save the session and serve it. False if it could not be saved."""
        name = self._name
        try:
            for _ in range(3):
                current = await self._store.generation(name)
                try:
                    stored = await self._store.load(name) if current else None
                except CorruptRecord:
                    stored = None
                epoch = stored.tokens.epoch if stored is not None and stored.tokens.epoch \
                    else new_epoch()
                tokens = dataclasses.replace(tokens, epoch=epoch)
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
            self._changed()
            if self._clock.monotonic() >= self._retry_at:
                self._start_renewal(f"rejected:{code}")

    async def rejected(self, generation: int, code: str, deadline: float | None = None) -> Lease:
        """The platform answered a token 401 (``code``) to a request made with ``generation``:
        renew once if that generation is still current, then hand out the newer token."""
        if generation == self.generation:
            if code == "OAU-213" and not self._access_dead:
                self._observer.session_lost(self._name, "revoked_or_evicted")
            self._access_dead = True
            self._refresh_at = 0.0
            self._changed()
            if self._renewal is None:
                if self._clock.monotonic() >= self._retry_at:
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
        now = self._clock.monotonic()
        tokens = self._tokens
        access_left = refresh_left = None
        if tokens is not None:
            if tokens.access_token and not self._access_dead:
                access_left = max(0.0, self._access_until - now)
            if tokens.refresh_token:
                refresh_left = (None if math.isinf(self._refresh_until)
                                else max(0.0, self._refresh_until - now))
        return {
            "account": self._name,
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

    async def retire(self, grace: float) -> None:
        """Removed by a reload: no more renewals or keep-alives; the requests holding a lease
        get up to ``grace`` s to finish (the session is revoked next)."""
        self.close()
        deadline = self._clock.monotonic() + grace
        while self._inflight and self._clock.monotonic() < deadline:
            await self._clock.sleep(0.05)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._renewal is not None:
            self._renewal.cancel()

    # -- leases and drain ----------------------------------------------------------------

    def _grant(self, tokens: TokenSet) -> Lease:
        generation = self.generation
        self._inflight[generation] = self._inflight.get(generation, 0) + 1
        self._used = True
        return tokens.access_token, generation

    def _due_reason(self) -> str:
        tokens = self._tokens
        if tokens is None or not tokens.access_token:
            return "initial"
        if self._access_dead or not self._access_alive():
            return "expired"
        if self._remote_drain == self.generation:
            return "remote"
        return "ahead"

    def _inflight_on(self, generation: int) -> int:
        return self._inflight.get(generation, 0)

    async def _drain(self, generation: int, deadline: float | None = None) -> None:
        """Let requests using ``generation`` finish before the refresh kills their token
        (until ``deadline``, monotonic; default: ``drain_timeout`` from now)."""
        if not self._inflight.get(generation):
            return
        now = self._clock.monotonic()
        if deadline is None:
            deadline = now + self._settings.drain_timeout
        budget = min(deadline - now, self._access_until - now - 0.02)
        if budget <= 0:
            return
        event = asyncio.Event()
        self._draining = (generation, event)
        with contextlib.suppress(TimeoutError):
            await within(self._clock, event.wait(), budget)

    def _fallback_possible(self) -> bool:
        return not self._access_dead and self._access_alive() \
            and self._remote_drain != self.generation

    def _fallback_or_raise(self) -> Lease:
        """While renewals fail, keep serving the old token as long as it is valid."""
        tokens = self._tokens
        if tokens is not None and self._fallback_possible():
            return self._grant(tokens)
        failure = self._failure or TokenUnavailable(Reason.NO_TOKEN, self._name)
        if failure.retry_after is not None and math.isfinite(self._retry_at):
            failure.retry_after = max(1.0, self._retry_at - self._clock.monotonic())
        raise failure

    def _timeout(self) -> TokenUnavailable:
        if self._waiting_for == "store":  # the renewal is stuck on a store call: say so
            return TokenUnavailable(Reason.STORE_NOT_ANSWERING, self._name,
                                    retry_after=self._settings.store_retry)
        if self._waiting_for == "holder":  # another process renews: say that
            return TokenUnavailable(Reason.LOCK_HELD, self._name, retry_after=1.0,
                                    waited=self._settings.token_wait_timeout)
        return TokenUnavailable(Reason.TIMEOUT, self._name, retry_after=1.0,
                                waited=self._settings.token_wait_timeout)

    def _set_state(self, state: AccountState) -> None:
        if state is not self.state:
            log.info("account %s: state %s -> %s", self._name, self.state, state,
                     extra={"event": "state_change", "account": self._name,
                            "state": state.value, "previous_state": self.state.value})
            self.state = state
            self.state_since = self._clock.wall()


def _unchanged() -> None:
    """No pool listens (an account on its own, in tests)."""


def process_owner() -> str:
    """This process's name as a lock owner: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
