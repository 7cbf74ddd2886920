"""One renewal of an account's tokens, single-flight: take the store's renewal lock (or find
the newer pair another process stored), obtain a new pair from the platform (refresh, else log
in anew, within the app's call budget), persist it before anyone uses it, and adopt it.

Part of :class:`~.account.AccountTokens` (its base :class:`Renewal`). Failures become
:class:`~.failures.TokenUnavailable` and a back-off (:func:`~.schedule.backoff_delay`). Each
renewal is an OpenTelemetry span (the API only: a no-op without ``[tracing]``), the child of
the request that started it, a trace of its own when a timer did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from ..config import AccountConfig
from ..store.base import CorruptRecord, StoredTokens, StoreError, TokenStore
from .budget import AuthBudget
from .clock import Clock, within
from .failures import Reason, TokenUnavailable
from .ports import Observer, Platform, PlatformRefused, PlatformUnreachable
from .schedule import backoff_delay, retrieve_exception
from .settings import PoolSettings
from .states import AccountState
from .token_set import TokenSet

log = logging.getLogger("tokenproxy.pool")
_tracer = trace.get_tracer("tokenproxy.tokens")  # a no-op until [tracing] installs a provider


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
    _waiting_for: str
    _lock_lost: bool
    _remote_drain: int
    _saving: asyncio.Task[None] | None
    _epoch: str
    _sent_at: float
    _refresh_at: float
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

    def _start_renewal(self, reason: str, unasked: bool = False) -> None:
        """Renew in a task of its own. Its span (OpenTelemetry) is a child of the current one
        (the request that needs the token: the gateway made its span current); ``unasked``
        (a timer, another process's announcement): a trace of its own."""
        parent = otel_context.Context() if unasked else None
        task = asyncio.get_running_loop().create_task(self._traced_renew(reason, parent),
                                                      name=f"renew:{self._name}")
        self._renewal = task
        self._changed()
        task.add_done_callback(retrieve_exception)

    async def _traced_renew(self, reason: str, parent: otel_context.Context | None) -> None:
        with _tracer.start_as_current_span(
                "tokenproxy renewal", context=parent, record_exception=False,
                set_status_on_exception=False,
                attributes={"tokenproxy.account": self._name,
                            "tokenproxy.renewal.reason": reason}) as span:
            try:
                await self._renew(reason)
            except TokenUnavailable as exc:  # no exception text: it may quote the platform
                span.set_attribute("tokenproxy.renewal.outcome", "failed")
                span.set_status(StatusCode.ERROR, exc.reason.value)
                raise

    async def _renew(self, reason: str) -> None:
        previous_state = self.state
        heartbeat: asyncio.Task[None] | None = None
        try:
            while True:
                record = await self._lock_or_newer()
                if record is not None:
                    break
                if reason == "remote" and not self._due_anyway():
                    # the announced rotation did not happen (its holder failed or died):
                    # serve the current token again, nothing to call
                    await self._release_lock()
                    self._remote_drain = -1
                    return
                if reason in ("ahead", "keepalive", "remote"):
                    await self._drain_cluster(self.generation)
                # the lock may have lapsed while we drained or a store call was slow:
                # check again right before the token call (issue 15.3)
                record = await self._lock_still_ours()
                if record is not None:
                    break
                if self._lock_lost:
                    continue  # another process holds it now: wait for its pair
                # "refreshing" from here: waiting for the store or a lock is not refreshing
                self._set_state(AccountState.REFRESHING)
                heartbeat = self._keep_lock()
                try:
                    record = await self._persist(await self._obtain(reason))
                except Superseded as exc:
                    record = exc.record
                break
            ours = record.tokens is self._pending
            outcome = self._obtained_by if ours else "adopted"
            trace.get_current_span().set_attributes(
                {"tokenproxy.renewal.outcome": outcome, "tokenproxy.generation": record.generation})
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
            self._adopt(record.generation, record.tokens, self._sent_at if ours else None)
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

    def _due_anyway(self) -> bool:
        """The current token needs renewing on its own account (dead, or past refresh-ahead)."""
        return (self._access_dead or not self._access_alive()
                or self._clock.monotonic() >= self._refresh_at)

    # -- the platform --------------------------------------------------------------------

    async def _obtain(self, reason: str) -> TokenSet:
        """New tokens: refresh while the refresh token lives, else log in with the grant."""
        account = self.account
        tokens = self._tokens
        session_gone = reason == "rejected:OAU-213" and account.can_login
        # A new login happens only once the held session is known dead (refresh refused, or
        # OAU-213), so re-authentication never adds a session beyond the account's budget.
        try:
            if tokens is not None and self._refresh_alive() and not session_gone:
                try:
                    await self._spend_budget()
                    self._obtained_by = "refreshed"
                    self._sent_at = self._clock.monotonic()
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
                await self._spend_budget()
                self._code_spent = account.grant == "authorization_code"
                self._obtained_by = "logged_in"
                self._sent_at = self._clock.monotonic()
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

    async def _spend_budget(self) -> None:
        """Count a token-endpoint call against the app's budget, or refuse to make it."""
        wait = await self._budget.take()
        if wait > 0:
            self._retry_at = self._clock.monotonic() + wait
            self.last_error = "auth budget exhausted"
            self.last_hint = (f"the proxy allows itself {self._budget.calls} token calls per "
                              f"{self._budget.window:g} s for this user and app, like the "
                              "platform's auth rate limit")
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
    # Records are ordered by (epoch, generation), never by the wall clocks of the hosts that
    # wrote them (issue 15.4): within one epoch a higher generation is newer; a record of
    # another epoch was written after the store was reset, so it is newer than anything we
    # held before; a lower generation of our epoch means the store lost our newest write
    # (a failover), and we write it again.

    def _compare(self, record: StoredTokens) -> str:
        """"newer", "same" or "older" than what this process holds."""
        if self._tokens is None or record.tokens.epoch != self._epoch:
            return "newer"
        if record.generation > self.generation:
            return "newer"
        return "same" if record.generation == self.generation else "older"

    async def _read_store(self) -> tuple[str, StoredTokens | None]:
        """The store's record compared with ours: "newer", "same", "older" (see
        :meth:`_compare`), "dead" (newer but holding no live token: a revocation's
        tombstone), "absent" or "unreadable". StoreError propagates."""
        name = self._name
        if await self._store.generation(name) == self.generation and self._epoch:
            return "same", None
        try:
            record = await self._store.load(name)
        except CorruptRecord as exc:
            self.last_error, self.last_hint = "stored tokens unreadable", str(exc)
            log.error("account %s: %s; it will be overwritten by the next renewal", name, exc)
            return "unreadable", None
        if record is None:
            return "absent", None
        order = self._compare(record)
        if order == "newer":
            now, theirs = self._clock.wall(), record.tokens
            if not (theirs.access_alive(now) or theirs.refresh_alive(now)):
                return "dead", record
        return order, record

    async def _newer_in_store(self) -> StoredTokens | None:
        """The pair another process stored since we last read or wrote, if it is readable,
        alive and newer than ours. When the store turns out to have lost our newest pair,
        it is written again. StoreError propagates."""
        order, record = await self._read_store()
        if order == "newer":
            return record
        if order in ("older", "absent") and self._tokens is not None and self._epoch \
                and self._renewal is None and (self._access_alive() or self._refresh_alive()):
            # the store lost our newest pair (a failover, a flush): put it back
            self._save_later(self._tokens, delay=0.0)
        return None

    async def _newer_in_store_or_none(self) -> StoredTokens | None:
        try:
            return await self._newer_in_store()
        except StoreError as exc:
            log.warning("account %s: reading the store: %s", self._name, exc)
            return None

    async def _store_call[T](self, call: Awaitable[T]) -> T:
        self._waiting_for = "store"
        try:
            return await call
        finally:
            self._waiting_for = ""

    async def _lock_or_newer(self) -> StoredTokens | None:
        """Hold the account's renewal lock (None), or return the newer tokens another process
        stored meanwhile. Processes sharing a store thus renew one at a time, once. Without a
        reachable store there is no renewal: a pair that cannot be saved could be lost.

        While another process holds the lock, this waits as long as that process's renewal
        may take (lease + token call), acknowledging its announced rotation once our own
        requests on the old generation are done."""
        name, lease = self._name, self._settings.lock_lease
        clock = self._clock
        started = clock.monotonic()
        give_up = started + lease + self._settings.token_call_timeout + 1.0
        acked = -1
        self._lock_lost = False
        outage_since: float | None = None
        pause = 0.05
        try:
            while True:
                taken = False
                try:
                    newer = await self._store_call(self._newer_in_store())
                    if newer is not None:
                        return newer
                    taken = await self._store_call(self._store.acquire_lock(
                        name, self._owner, lease))
                    if taken:
                        newer = await self._store_call(self._newer_in_store())
                        if newer is not None:
                            await self._release_lock()
                        return newer
                    if self._remote_drain == self.generation and acked != self.generation \
                            and not self._inflight_on(self.generation):
                        await self._store_call(self._store.ack_rotation(
                            name, self.generation, self._owner))
                        acked = self.generation
                    outage_since, pause = None, 0.05
                except StoreError as exc:
                    if taken:  # do not leave the lock held for a whole lease (issue 15.9)
                        await self._release_lock()
                        raise self._store_down(exc) from None
                    # A store that fails while we wait is often one failing over (Sentinel
                    # promotes a replica in seconds): keep trying for store_failover_wait,
                    # then say the store is down.
                    now = clock.monotonic()
                    outage_since = now if outage_since is None else outage_since
                    if now - outage_since >= self._settings.store_failover_wait:
                        raise self._store_down(exc) from None
                    pause = min(pause * 2, 1.0)
                    self._waiting_for = "store"
                    try:
                        await clock.sleep(pause)
                    finally:
                        self._waiting_for = ""
                    continue
                if clock.monotonic() >= give_up:
                    raise TokenUnavailable(Reason.LOCK_HELD, name, retry_after=1.0)
                self._waiting_for = "holder"
                try:
                    await clock.sleep(0.05)
                finally:
                    self._waiting_for = ""
        finally:
            self._observer.store_lock_wait(self._store.backend, clock.monotonic() - started)

    async def _lock_still_ours(self) -> StoredTokens | None:
        """Right before the token call: re-take (extend) our lock. ``_lock_lost`` is set when
        another process holds it now; a newer pair stored meanwhile is returned."""
        name = self._name
        try:
            if self._lock_lost or not await self._store_call(
                    self._store.acquire_lock(name, self._owner, self._settings.lock_lease)):
                self._lock_lost = True
                log.warning("account %s: the renewal lock lapsed and another process took it; "
                            "waiting for its pair instead of calling the platform", name)
                return None
            newer = await self._store_call(self._newer_in_store())
        except StoreError as exc:
            await self._release_lock()
            raise self._store_down(exc) from None
        if newer is not None:
            await self._release_lock()
        return newer

    async def _drain_cluster(self, generation: int) -> None:
        """Before a refresh that kills ``generation``'s access token (refresh-ahead,
        keep-alive): announce it, let our own requests on it finish, and wait until every
        other live process sharing the store has stopped leasing it and finished its requests
        on it — at most ``drain_timeout`` in all (issue 15.2)."""
        clock, settings, name = self._clock, self._settings, self._name
        if not self._access_alive() or self._access_dead:
            return  # nobody can use it any more: nothing to drain
        started = clock.monotonic()
        deadline = started + min(settings.drain_timeout,
                                 self._access_until - started - 0.02)
        try:
            others = await self._store.members() - {self._owner}
            if others:
                await self._store.announce_rotation(name, generation, self._owner,
                                                    settings.drain_timeout + 1.0)
        except StoreError as exc:
            log.warning("account %s: could not announce the rotation (%s); draining this "
                        "process only", name, exc)
            others = set()
        await self._drain(generation, deadline)
        acked: set[str] = set()
        while others - acked and clock.monotonic() < deadline:
            try:
                acked = await self._store.rotation_acks(name, generation)
            except StoreError:
                break
            if others <= acked:
                break
            await clock.sleep(0.02)
        if others:
            missing = len(others - acked)
            log.info("account %s: drained generation %d across %d processes in %.3f s%s",
                     name, generation, len(others) + 1, clock.monotonic() - started,
                     f" ({missing} did not answer)" if missing else "")

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
        lease run out under us); cancelled when the renewal ends. A heartbeat that does not
        answer within a third of the lease counts as a miss: two misses in a row and the
        lease may have run out, so the lock is taken as lost (the pair we obtain is still
        fenced by the store's compare-and-set)."""
        name, lease = self._name, self._settings.lock_lease
        clock = self._clock

        async def beat() -> None:
            misses = 0
            while True:
                await clock.sleep(lease / 3)
                try:
                    held = await within(clock, self._store.acquire_lock(name, self._owner,
                                                                        lease), lease / 3)
                except (StoreError, TimeoutError) as exc:
                    misses += 1
                    log.warning("account %s: extending the renewal lock: %s", name,
                                str(exc) or "no answer in time")
                    if misses >= 2:
                        self._lock_lost = True
                    continue
                misses = 0
                if not held:
                    self._lock_lost = True
                    log.warning("account %s: lost the renewal lock to another process", name)
                    return

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
        out), theirs — ours is then revoked, so it holds no session slot. A write whose reply
        was lost and that the store client re-sent finds our own pair stored: that is ours
        (issue 15.1)."""
        name = self._name
        based_on = expected = self.generation
        epoch = self._epoch if expected > 0 and self._epoch else ""
        tokens = self._stamped(tokens, epoch or new_epoch())
        try:
            for _ in range(3):
                if await self._store.compare_and_set(name, expected, tokens):
                    return StoredTokens(expected + 1, tokens)
                try:
                    stored = await self._store.load(name)
                except CorruptRecord:
                    stored = None
                if stored is not None and stored.tokens.same_pair(tokens):
                    return StoredTokens(stored.generation, tokens)  # our own write
                if stored is not None and stored.generation > based_on \
                        and stored.tokens.epoch == tokens.epoch \
                        and stored.tokens.refresh_alive(self._clock.wall()):
                    self._discard(tokens, stored.tokens)
                    return stored
                # dead, unreadable, reset or behind (a failover lost writes): ours goes over it
                expected = await self._store.generation(name)
                if expected == 0 or (stored is not None and stored.tokens.epoch != tokens.epoch):
                    tokens = self._stamped(tokens, new_epoch())
        except StoreError as exc:
            # The platform has already rotated: the new pair is the only one that works.
            # Serve it from memory and keep trying to save it.
            log.error("account %s: could not save the new tokens (%s); serving them from "
                      "memory and retrying the store", name, exc)
            self._save_later(tokens)
            return StoredTokens(based_on + 1, tokens)
        log.error("account %s: store generation keeps moving; serving the new tokens and "
                  "saving them when the store settles", name)
        self._save_later(tokens)  # issue 15.9: never served unsaved without a retry
        return StoredTokens(expected + 1, tokens)

    def _stamped(self, tokens: TokenSet, epoch: str) -> TokenSet:
        """``tokens`` in record lineage ``epoch``; the pending pair is the stamped one."""
        if tokens.epoch != epoch:
            tokens = dataclasses.replace(tokens, epoch=epoch)
        self._pending = tokens
        return tokens

    def _discard(self, ours: TokenSet, kept: TokenSet) -> None:
        """Revoke a pair we obtained but will not use (another process's pair won). Compared
        by token value: a pair that shares a token with the kept one is the kept session's
        (a grace replay, our own retried write) and revoking it would end the kept pair."""
        if ours.shares_a_token(kept):
            return
        token = ours.refresh_token or ours.access_token
        log.warning("account %s: another process stored a pair meanwhile; revoking ours",
                    self._name)

        async def revoke() -> None:
            with contextlib.suppress(Exception):
                await self._platform.revoke(self.account, token)

        asyncio.get_running_loop().create_task(revoke()).add_done_callback(retrieve_exception)

    def _save_later(self, tokens: TokenSet, delay: float | None = None) -> None:
        """Save a pair the store does not hold (it was down, its generation kept moving, or a
        failover lost it), until it is saved or superseded. One saver per account."""
        if self._saving is not None and not self._saving.done():
            return
        name = self._name

        async def retry() -> None:
            wait = self._settings.store_retry if delay is None else delay
            while not self._closed and (self._tokens is tokens or self._pending is tokens):
                await self._clock.sleep(wait)
                wait = self._settings.store_retry
                try:
                    order, record = await self._read_store()
                    if order == "newer" and record is not None:
                        if self._renewal is None:
                            self._discard(tokens, record.tokens)
                            self._adopt(record.generation, record.tokens)
                        return
                    if order in ("same", "dead"):  # saved already, or revoked since
                        return
                    stored = await self._store.generation(name)
                    saved = tokens if stored > 0 and record is not None \
                        and record.tokens.epoch == tokens.epoch \
                        else dataclasses.replace(tokens, epoch=new_epoch())
                    if await self._store.compare_and_set(name, stored, saved):
                        if self._tokens is tokens:
                            self._tokens = saved
                            self._epoch = saved.epoch
                            self.generation = stored + 1
                        log.info("account %s: the new tokens are saved now (generation %d)",
                                 name, stored + 1)
                        return
                except StoreError:
                    wait = min(wait * 2, 10.0)

        task = asyncio.get_running_loop().create_task(retry(), name=f"save:{name}")
        task.add_done_callback(retrieve_exception)
        self._saving = task

    if TYPE_CHECKING:  # provided by AccountTokens and Scheduling
        async def _drain(self, generation: int, deadline: float | None = None) -> None: ...

        def _inflight_on(self, generation: int) -> int: ...

        def _access_alive(self) -> bool: ...

        def _refresh_alive(self) -> bool: ...

        def _set_state(self, state: AccountState) -> None: ...

        def _schedule(self) -> None: ...

        def _adopt(self, generation: int, tokens: TokenSet,
                   sent_at: float | None = None) -> None: ...


def new_epoch() -> str:
    """A fresh record lineage: 64 random bits, hex."""
    return uuid.uuid4().hex[:16]
