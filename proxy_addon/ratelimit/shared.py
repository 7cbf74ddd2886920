"""A (account, group) budget shared by every process of a deployment through the token store
(issue 17): N replicas on one Redis, or the workers of one host on one SQLite file, together
keep to the platform's limit instead of each keeping to all of it.

:class:`SharedGate` is a :class:`~.gate.Gate` whose slots are taken in the store's window
(``rate_reserve``: a sliding window of send times on the store's clock, with the group's
penalty) before a waiter goes. The fair queue between the account's apps stays in each process
(fairness across processes is that of the load balancer); every request of a shared group waits
for one store round trip. What the platform says still comes in per process: limits and windows
learned from its headers; a 429's penalty is written to the store, so no replica sends into it.
Calls the platform counted beyond the shared window (something not behind the proxy) are not
folded in here (only a single process without a shared store does that, :mod:`.gate`): an
answer's count cannot be told apart from the other processes' calls made since.

The store being away never means unlimited: the gate falls back to the per-process budget of
``limit / N`` (N: the configured replicas times the workers of this host, or the processes the
store last saw heartbeating, whichever is larger) and asks the store again after
:data:`RETRY_STORE`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import uuid
from collections.abc import Callable
from typing import Protocol

from .gate import Gate

log = logging.getLogger("tokenproxy.rate_limit")

RETRY_STORE = 30.0  # s on per-process budgets after the store failed, before asking it again
MAX_SLEEP = 1.0  # s a dispatcher sleeps at most before looking again


class RateWindows(Protocol):
    """The store's port for shared windows (``proxy_addon.store.base.TokenStore``)."""

    shares_rate_limits: bool

    async def rate_reserve(self, key: str, limit: int, span: float, member: str
                           ) -> tuple[float, int]: ...

    async def rate_restamp(self, key: str, member: str) -> None: ...

    async def rate_penalize(self, key: str, seconds: float) -> None: ...


class SharedGate(Gate):
    def __init__(self, key: str, windows: RateWindows, limit: int, window: float, *,
                 fallback_share: Callable[[], float], now: Callable[[], float]) -> None:
        super().__init__(limit, window, share=1.0, now=now)
        self.key = key
        self._windows = windows
        self._fallback_share = fallback_share
        self._degraded_until = -math.inf
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._slots = itertools.count()

    @property
    def degraded(self) -> bool:
        return self._now() < self._degraded_until

    def _degrade(self, error: Exception) -> None:
        if not self.degraded:
            log.warning("rate limits of %s: the store failed (%s): this process keeps to "
                        "1/%d of the budget for %.0f s", self.key, error,
                        round(1 / self._fallback_share()), RETRY_STORE,
                        extra={"event": "rate_limit_store_down"})
        self._degraded_until = self._now() + RETRY_STORE
        self.share = self._fallback_share()

    # -- admission ---------------------------------------------------------------------------

    def try_pass(self, client: str, weight: float) -> bool:
        if self.degraded:
            return super().try_pass(client, weight)
        self.share = 1.0
        return False  # every request asks the store (Governor.wait)

    def _dispatch(self) -> None:
        if self.degraded:
            super()._dispatch()
            return
        if self.waiting and (self._dispatcher is None or self._dispatcher.done()):
            try:
                self._dispatcher = asyncio.get_running_loop().create_task(self._serve())
            except RuntimeError:  # no loop (a synchronous caller): the next wait starts it
                pass

    async def _serve(self) -> None:
        """Take store slots and hand them out, fairly, while anyone waits."""
        while self.waiting:
            if self.degraded:
                super()._dispatch()
                return
            self.share = 1.0  # the store answers again: the whole budget, counted there
            now = self._now()
            if not self._room(now) or self._pick(now) is None:  # penalty, probe, quotas
                await asyncio.sleep(min(MAX_SLEEP, max(0.005, self._local_wait(now))))
                continue
            slot = f"{self._process}-{next(self._slots)}"
            try:
                wait, _ = await self._windows.rate_reserve(
                    self.key, self.local_limit, self.span, slot)
            except Exception as exc:  # StoreError: the store is away
                self._degrade(exc)
                super()._dispatch()
                return
            if wait > 0:
                await asyncio.sleep(min(MAX_SLEEP, wait))
                continue
            now = self._now()
            chosen = self._pick(now)
            if chosen is None:  # its waiters left while we asked: the slot stays taken
                continue
            self._grant(chosen, now, slot)

    def _local_wait(self, now: float) -> float:
        if now < self.penalty_until:
            return self.penalty_until - now
        return 0.05

    # -- the platform's word, shared -------------------------------------------------------

    def restamp_slot(self, slot: str) -> None:
        """The request holding ``slot`` leaves now (see :meth:`Gate.restamp`)."""
        self._spawn(self._windows.rate_restamp(self.key, slot))

    def penalize(self, seconds: float) -> None:
        super().penalize(seconds)
        self._spawn(self._windows.rate_penalize(self.key, seconds))

    @property
    def folds_outside(self) -> bool:
        # the store's window holds every process's calls; the platform's count, read at some
        # answer, cannot be told apart from calls other processes made since: not folded in
        return False

    def _spawn(self, call: object) -> None:
        async def run() -> None:
            try:
                await call  # type: ignore[misc]
            except Exception as exc:
                self._degrade(exc)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:
            close = getattr(call, "close", None)
            if close is not None:
                close()  # no loop: the coroutine is dropped, not left unawaited
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
