"""When an account renews without being asked: refresh-ahead (with jitter) before the access
token expires, keep-alive before an idle account's refresh token dies, retries after a back-off
(honouring the platform's Retry-After), and polling the store while a person must reauthorize.

The pure functions compute instants from a token set's wall-clock expiry; :class:`Scheduling`
(part of :class:`~.account.AccountTokens`) converts them to the core's monotonic clock and arms
the account's one timer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..store.base import StoreError, TokenStore
from .clock import Clock, Timer
from .settings import PoolSettings
from .states import AccountState
from .token_set import TokenSet

if TYPE_CHECKING:
    from ..store.base import StoredTokens

log = logging.getLogger("tokenproxy.pool")


def refresh_ahead_at(tokens: TokenSet, settings: PoolSettings, jitter: float) -> float:
    """Wall time of the refresh-ahead: ``refresh_ahead`` before expiry, at most
    ``refresh_ahead_share`` of the token's lifetime, stretched by ``jitter`` (1.0..1.2) so
    that replicas and accounts do not all renew at once."""
    margin = min(settings.refresh_ahead,
                 max(0.05, tokens.access_lifetime * settings.refresh_ahead_share))
    return tokens.access_expires_at - margin * jitter


def keepalive_at(tokens: TokenSet, settings: PoolSettings) -> float:
    """Wall time at which an idle account renews to keep its refresh token alive (inf: the
    refresh token does not expire)."""
    if tokens.refresh_expires_at is None:
        return math.inf
    lifetime = tokens.refresh_expires_at - tokens.issued_at
    margin = min(settings.keepalive_max, lifetime * settings.keepalive_share)
    return tokens.refresh_expires_at - margin


def backoff_delay(failures: int, settings: PoolSettings, rng: random.Random,
                  at_least: float | None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: exponential, capped,
    jittered down by up to 25 %, never shorter than the platform's Retry-After."""
    delay = min(settings.backoff_max, settings.backoff_base * 2 ** (failures - 1))
    delay *= rng.uniform(0.75, 1.0)
    if at_least is not None:
        delay = max(delay, at_least)
    return delay


class Scheduling:
    """The timer half of an account (a base of :class:`~.account.AccountTokens`)."""

    # set by AccountTokens.__init__
    _clock: Clock
    _settings: PoolSettings
    _rng: random.Random
    _timer: Timer | None
    _tokens: TokenSet | None
    _renewal: asyncio.Task[None] | None
    _closed: bool
    _checking: bool
    _access_dead: bool
    _used: bool
    _refresh_at: float  # monotonic; 0.0: due now
    _keepalive_at: float  # monotonic; inf: never
    _access_until: float  # monotonic
    _refresh_until: float  # monotonic; inf: never
    _notice_again: bool
    _remote_drain: int
    _store: TokenStore
    _owner: str
    _retry_at: float  # monotonic; inf: only after a person acts
    # called whenever the account's rotation window may move (the pool caches answers)
    _changed: Callable[[], None]
    state: AccountState
    generation: int

    def _schedule(self) -> None:
        """Arm the timer for the next refresh-ahead, keep-alive or retry."""
        self._changed()  # instants, renewal or tokens moved: the pool's answers are stale
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        clock = self._clock
        if self.state is AccountState.REAUTH_REQUIRED:
            self._timer = clock.call_later(self._settings.reauth_poll, self._poll_reauthorized)
            return
        tokens = self._tokens
        if tokens is None or not math.isfinite(self._retry_at):
            return
        settings = self._settings
        # instants relative to the set's expiry anchors (monotonic, fixed when the set was
        # obtained or adopted): re-arming after a wall clock step moves nothing (issue 15.5)
        if tokens.access_token and not self._access_dead:
            margin = tokens.access_expires_at - refresh_ahead_at(
                tokens, settings, self._rng.uniform(1.0, 1.2))
            self._refresh_at = self._access_until - margin
        else:
            self._refresh_at = 0.0
        keepalive = keepalive_at(tokens, settings)
        if math.isfinite(keepalive) and tokens.refresh_expires_at is not None:
            self._keepalive_at = self._refresh_until - (tokens.refresh_expires_at - keepalive)
        else:
            self._keepalive_at = math.inf
        due = min(self._keepalive_at, max(self._refresh_at, self._retry_at))
        if math.isfinite(due):
            delay = max(0.0, due - clock.monotonic())
            self._timer = clock.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._renewal is not None:
            return
        now = self._clock.monotonic()
        if now < self._retry_at:
            self._schedule()
            return
        if now >= self._keepalive_at:
            self._start_renewal("keepalive", unasked=True)
        elif self._used and now >= self._refresh_at:
            self._start_renewal("ahead", unasked=True)
        elif self._refresh_at > now:
            self._schedule()
        elif math.isfinite(self._keepalive_at):
            self._timer = self._clock.call_later(max(0.0, self._keepalive_at - now),
                                                 self._on_timer)

    def _poll_reauthorized(self) -> None:
        self._timer = None
        if self._renewal is None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._check_reauthorized())
            task.add_done_callback(retrieve_exception)

    async def _check_reauthorized(self) -> None:
        """While reauth_required: has `tokenproxy authorize` stored a new session?"""
        newer = await self._newer_in_store_or_none()
        if newer is not None and self.state is AccountState.REAUTH_REQUIRED:
            log.info("account %s: new session authorized; serving again", self._name,
                     extra={"event": "reauthorized", "account": self._name})
            self._adopt(newer.generation, newer.tokens)
            return
        if self.state is AccountState.REAUTH_REQUIRED:
            self._schedule()

    def notice(self, generation: int) -> None:
        """Another process wrote ``generation`` of this account (0: maybe, re-read): adopt
        it now rather than on the next 401. A notice that comes while a read is under way is
        kept and read after it (issue 15.9)."""
        if self._closed or self._renewal is not None \
                or (generation == self.generation and generation != 0):
            return
        if self._checking:
            self._notice_again = True
            return
        self._checking = True

        async def check() -> None:
            try:
                while True:
                    self._notice_again = False
                    newer = await self._newer_in_store_or_none()
                    if newer is not None and self._renewal is None and not self._closed:
                        log.info("account %s: adopted generation %d that another process "
                                 "stored", self._name, newer.generation)
                        self._adopt(newer.generation, newer.tokens)
                    if not self._notice_again or self._closed:
                        return
            finally:
                self._checking = False

        asyncio.get_running_loop().create_task(check()).add_done_callback(retrieve_exception)

    def announced(self, generation: int) -> None:
        """Another process is about to rotate ``generation`` (issue 15.2): stop leasing it,
        let our requests on it finish, acknowledge, and adopt the new pair when it is stored.
        An announcement of a generation we do not serve is acknowledged at once."""
        if self._closed:
            return
        if generation == self.generation and self._access_alive() and not self._access_dead:
            self._remote_drain = generation
            self._changed()
            if self._renewal is None:
                self._start_renewal("remote", unasked=True)
            return  # the renewal acknowledges once our requests on it are done
        task = asyncio.get_running_loop().create_task(self._acknowledge(generation))
        task.add_done_callback(retrieve_exception)

    async def _acknowledge(self, generation: int) -> None:
        try:
            await self._store.ack_rotation(self._name, generation, self._owner)
        except StoreError as exc:
            log.warning("account %s: acknowledging a rotation: %s", self._name, exc)

    def rotation_near(self) -> bool:
        """A rotation of this account may be announced soon (inside the refresh-ahead
        window, or one is under way): stores without notifications poll faster then."""
        start, end = self.rotation_window()
        return start <= self._clock.monotonic() < end

    def rotation_window(self) -> tuple[float, float]:
        """The monotonic interval ``[start, end)`` in which :meth:`rotation_near` holds, for
        as long as the account does not change (it calls ``_changed`` when it does): from a
        little before the refresh-ahead until its access token dies; ``(-inf, inf)`` while a
        rotation is under way; empty without an access token."""
        if self._renewal is not None or self._remote_drain >= 0:
            return -math.inf, math.inf
        tokens = self._tokens
        if tokens is None or not tokens.access_token:
            return math.inf, math.inf
        return self._refresh_at - 2 * self._settings.drain_timeout - 1.0, self._access_until

    if TYPE_CHECKING:  # provided by AccountTokens and Renewal
        _name: str

        def _start_renewal(self, reason: str, unasked: bool = False) -> None: ...

        def _adopt(self, generation: int, tokens: TokenSet,
                   sent_at: float | None = None) -> None: ...

        def _access_alive(self) -> bool: ...

        async def _newer_in_store_or_none(self) -> StoredTokens | None: ...


def retrieve_exception(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
