"""One renewal of an account's tokens, single-flight: take the store's renewal lock (or find
the newer pair another process stored), obtain a new pair from the platform (refresh, else log
in anew, within the app's call budget), persist it before anyone uses it, and adopt it.

Part of :class:`~.account.AccountTokens` (its base :class:`Renewal`). Failures become
:class:`~.failures.TokenUnavailable` and a back-off (:func:`~.schedule.backoff_delay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from typing import TYPE_CHECKING

from ..config import AccountConfig
from ..store.base import CorruptRecord, StoredTokens, StoreError, TokenStore
from .budget import AuthBudget
from .clock import Clock
from .failures import Reason, TokenUnavailable
from .ports import Observer, Platform, PlatformRefused, PlatformUnreachable
from .schedule import backoff_delay, retrieve_exception
from .settings import PoolSettings
from .states import AccountState
from .token_set import TokenSet

log = logging.getLogger("tokenproxy.pool")


class Superseded(Exception):
    """Another process stored a newer pair while we renewed: use theirs."""

    def __init__(self, record: StoredTokens) -> None:
        super().__init__(record.generation)
        self.record = record


class Renewal:
    """The renewal half of an account (a base of :class:`~.account.AccountTokens`)."""

    # set by AccountTokens.__init__
    account: AccountConfig
    _name: str
    _clock: Clock
    _settings: PoolSettings
    _rng: random.Random
    _platform: Platform
    _store: TokenStore
    _observer: Observer
    _owner: str
    _budget: AuthBudget
    _tokens: TokenSet | None
    _pending: TokenSet | None
    _obtained_by: str
    _code_spent: bool
    _awaiting_store: bool
    _renewal: asyncio.Task[None] | None
    _draining: tuple[int, asyncio.Event] | None
    _failure: TokenUnavailable | None
    _failures: int
    _retry_at: float
    _access_dead: bool
    _used: bool
    _closed: bool
    generation: int
    state: AccountState
    last_error: str
    last_hint: str
    last_refresh: float | None
    token_calls: int

    def _start_renewal(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._renew(reason),
                                                      name=f"renew:{self._name}")
        self._renewal = task
        task.add_done_callback(retrieve_exception)

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
                except Superseded as exc:
                    record = exc.record
            outcome = "adopted" if record.tokens is not self._pending else self._obtained_by
            name = self._name
            log.info("account %s: renewal %s (reason %s), generation %d", name, outcome, reason,
                     record.generation,
                     extra={"event": "renewal", "account": name, "reason": reason,
                            "state": outcome, "generation": record.generation})
            self._observer.renewal(name, outcome)
        except TokenUnavailable as exc:
            self._observer.renewal(self._name, "failed")
            self._failure = exc
            if self.state in (AccountState.REFRESHING, AccountState.HEALTHY, AccountState.IDLE):
                self._set_state(AccountState.BACKING_OFF)
            raise
        except asyncio.CancelledError:
            self._set_state(previous_state)
            raise
        else:
            self._observer.secrets(record.tokens.access_token, record.tokens.refresh_token)
            self.generation = record.generation
            self._tokens = record.tokens
            self._access_dead = False
            self._used = False
            self._failures = 0
            self._retry_at = 0.0
            self._failure = None
            self.last_refresh = self._clock.wall()
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

    # -- the platform --------------------------------------------------------------------

    async def _obtain(self, reason: str) -> TokenSet:
        """New tokens: refresh while the refresh token lives, else log in with the grant."""
        account = self.account
        tokens = self._tokens
        now = self._clock.wall()
        session_gone = reason == "rejected:OAU-213" and account.can_login
        # A new login happens only once the held session is known dead (refresh refused, or
        # OAU-213), so re-authentication never adds a session beyond the account's budget.
        try:
            if tokens is not None and tokens.refresh_alive(now) and not session_gone:
                try:
                    self._spend_budget()
                    self._obtained_by = "refreshed"
                    return await self._platform.refresh(account, tokens.refresh_token or "")
                except PlatformRefused as exc:
                    if not exc.refresh_token_dead:
                        raise
                    newer = await self._newer_in_store_or_none()
                    if newer is not None:  # another process rotated it: not dead, just old
                        raise Superseded(newer) from None
                    self._observer.session_lost(account.name, "refresh_token_dead")
                    log.warning("account %s: refresh token is dead (%s); logging in again",
                                account.name, exc.code or exc.error)
            if account.can_login or (account.grant == "authorization_code"
                                     and not self._code_spent):
                self._spend_budget()
                self._code_spent = account.grant == "authorization_code"
                self._obtained_by = "logged_in"
                tokens = await self._platform.login(account)
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
            raise TokenUnavailable(Reason.REAUTH_REQUIRED, account.name, self.last_error,
                                   hint=self.last_hint)
        except PlatformRefused as exc:
            raise self._endpoint_failure(exc) from None
        except PlatformUnreachable as exc:
            self._back_off(None)
            self.last_error, self.last_hint = "upstream unreachable", str(exc)
            log.warning("account %s: %s", account.name, exc)
            raise TokenUnavailable(Reason.UPSTREAM_UNREACHABLE, account.name, str(exc),
                                   retry_after=self._retry_at - self._clock.monotonic()) from None

    def _spend_budget(self) -> None:
        """Count a token-endpoint call against the app's budget, or refuse to make it."""
        wait = self._budget.reserve()
        if wait > 0:
            self._retry_at = self._clock.monotonic() + wait
            self.last_error = "auth budget exhausted"
            self.last_hint = (f"the proxy allows itself {self._settings.auth_budget_calls} "
                              f"token calls per {self._settings.auth_budget_window:g} s for "
                              "this app, like the platform's auth rate limit")
            log.warning("account %s: token-call budget exhausted; next call in %.1f s",
                        self._name, wait)
            raise TokenUnavailable(Reason.BUDGET_EXHAUSTED, self._name, self.last_error,
                                   hint=self.last_hint, retry_after=wait)
        self.token_calls += 1

    def _endpoint_failure(self, exc: PlatformRefused) -> TokenUnavailable:
        name = self._name
        self.last_error = exc.code or exc.error or f"HTTP {exc.status}"
        cause_changed = self.last_hint != exc.hint
        self.last_hint = exc.hint
        if exc.rate_limited:
            self._back_off(exc.retry_after)
            wait = self._retry_at - self._clock.monotonic()
            log.warning("account %s: token endpoint rate limit (%s); backing off %.0f s",
                        name, exc.code or "429", wait)
            return TokenUnavailable(Reason.RATE_LIMITED, name, self.last_error,
                                    hint=exc.hint, retry_after=wait)
        if exc.status < 500 and exc.error in ("invalid_client", "unauthorized_client",
                                               "invalid_grant", "invalid_request"):
            self._back_off(self._settings.misconfigured_backoff)
            self._set_state(AccountState.MISCONFIGURED)
            if cause_changed:
                log.error("account %s: token endpoint refused the account's credentials: %s — "
                          "hint: %s", name, exc, exc.hint)
            return TokenUnavailable(Reason.MISCONFIGURED, name, self.last_error, hint=exc.hint,
                                    retry_after=self._retry_at - self._clock.monotonic())
        self._back_off(exc.retry_after)
        log.warning("account %s: token endpoint failed: %s", name, exc)
        return TokenUnavailable(Reason.ENDPOINT_FAILED, name, self.last_error, hint=exc.hint,
                                retry_after=self._retry_at - self._clock.monotonic())

    def _back_off(self, at_least: float | None) -> None:
        self._failures += 1
        delay = backoff_delay(self._failures, self._settings, self._rng, at_least)
        self._retry_at = self._clock.monotonic() + delay

    # -- the store -----------------------------------------------------------------------

    async def _newer_in_store(self) -> StoredTokens | None:
        """The pair another process stored since we last read or wrote, if it is readable,
        alive and not older than ours (a lower generation means the store was reset).
        StoreError propagates: the caller decides what an unreachable store means."""
        name = self._name
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
        now, ours = self._clock.wall(), self._tokens
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
            log.warning("account %s: reading the store: %s", self._name, exc)
            return None

    async def _lock_or_newer(self) -> StoredTokens | None:
        """Hold the account's renewal lock (None), or return the newer tokens another process
        stored meanwhile. Processes sharing a store thus renew one at a time, once. Without a
        reachable store there is no renewal: a pair that cannot be saved could be lost."""
        name, lease = self._name, self._settings.lock_lease
        clock = self._clock
        started = clock.monotonic()
        give_up = started + lease + 1.0  # a dead holder's lease runs out
        self._awaiting_store = True
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
                if clock.monotonic() >= give_up:
                    raise TokenUnavailable(Reason.LOCK_HELD, name, retry_after=1.0)
                await clock.sleep(0.05)
        except StoreError as exc:
            raise self._store_down(exc) from None
        finally:
            self._awaiting_store = False
            self._observer.store_lock_wait(self._store.backend, clock.monotonic() - started)

    def _store_down(self, exc: StoreError) -> TokenUnavailable:
        if self.last_error != "store unavailable":
            log.error("account %s: the store is unreachable, renewals wait for it: %s",
                      self._name, exc)
        self.last_error, self.last_hint = "store unavailable", str(exc)
        self._retry_at = self._clock.monotonic() + self._settings.store_retry
        return TokenUnavailable(Reason.STORE_UNREACHABLE, self._name, str(exc),
                                retry_after=self._settings.store_retry)

    def _keep_lock(self) -> asyncio.Task[None]:
        """Extend the renewal lock while we hold it (a slow token endpoint must not let the
        lease run out under us); cancelled when the renewal ends."""
        name, lease = self._name, self._settings.lock_lease

        async def beat() -> None:
            while True:
                await self._clock.sleep(lease / 3)
                try:
                    if not await self._store.acquire_lock(name, self._owner, lease):
                        log.warning("account %s: lost the renewal lock to another process",
                                    name)
                        return
                except StoreError as exc:
                    log.warning("account %s: extending the renewal lock: %s", name, exc)

        task = asyncio.get_running_loop().create_task(beat(), name=f"lock:{name}")
        task.add_done_callback(retrieve_exception)
        return task

    async def _release_lock(self) -> None:
        try:
            await self._store.release_lock(self._name, self._owner)
        except StoreError as exc:
            log.warning("account %s: releasing the store lock: %s", self._name, exc)

    async def _persist(self, tokens: TokenSet) -> StoredTokens:
        """Write the new pair to the store before anyone uses it. Returns what to use: our
        pair with its generation or, if another process stored a pair meanwhile (our lock ran
        out), theirs — ours is then revoked, so it holds no session slot."""
        self._pending = tokens
        name = self._name
        based_on = expected = self.generation
        try:
            for _ in range(3):
                if await self._store.compare_and_set(name, expected, tokens):
                    return StoredTokens(expected + 1, tokens)
                try:
                    stored = await self._store.load(name)
                except CorruptRecord:
                    stored = None
                now = self._clock.wall()
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
                    self._name)

        async def revoke() -> None:
            with contextlib.suppress(Exception):
                await self._platform.revoke(self.account, token)

        asyncio.get_running_loop().create_task(revoke()).add_done_callback(retrieve_exception)

    def _save_later(self, tokens: TokenSet) -> None:
        """Retry saving a pair the store refused while it was down, until it is saved or
        superseded."""
        name = self._name

        async def retry() -> None:
            delay = self._settings.store_retry
            while not self._closed and (self._tokens is tokens or self._pending is tokens):
                await self._clock.sleep(delay)
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

        asyncio.get_running_loop().create_task(retry()).add_done_callback(retrieve_exception)

    if TYPE_CHECKING:  # provided by AccountTokens and Scheduling
        async def _drain(self, generation: int) -> None: ...

        def _set_state(self, state: AccountState) -> None: ...

        def _schedule(self) -> None: ...

        def _adopt(self, generation: int, tokens: TokenSet) -> None: ...
