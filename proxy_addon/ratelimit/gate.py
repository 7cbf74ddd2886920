"""One (account, group) budget and its queue: what lets a request go to the platform, when.

The platform allows ``limit`` calls per ``window`` seconds per (user, app, group); the call over
the limit, and every call during the penalty that follows, is refused and restarts the penalty
(ringcentral-api-docs ``docs/basics/rate-limits.md``, lines 11, 35-42, 58-59). A :class:`Gate`
keeps the send times of its group in a sliding window a little longer than the platform's (so
arrival jitter cannot make two windows' worth land in one), and sends nothing during a penalty.

A request finding no room waits in a bounded queue until a slot frees or its deadline passes
(then :class:`RateRefused` with a truthful ``retry_after``). The queue is weighted fair between
the account's clients (apps): each waiter gets a finish tag ``max(now_tag, client's last tag) +
1/weight`` and the smallest tag goes first, so an app with weight 2 gets twice the slots of an
app with weight 1 while both are waiting, and one app's burst cannot starve the others. A client
may also have a hard quota per window (``rate_quota``). Waiting happens before the request
takes a token lease, so a queue never delays a token renewal.

``share`` is this process's part of the budget (1/N for N processes that cannot share counts
through the store): each process keeps to ``limit * share``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .headers import RateHeaders


class RateRefused(Exception):
    """No slot within the request's deadline: answer 429 with ``retry_after`` seconds."""

    def __init__(self, retry_after: float, penalty: bool) -> None:
        super().__init__(f"rate limited for {retry_after:.1f} s")
        self.retry_after = retry_after
        self.penalty = penalty  # the platform's penalty is running (else: the budget is used)


@dataclass(eq=False)
class _Waiter:
    seq: int
    client: str
    weight: float
    future: asyncio.Future[tuple[float, str | None]]  # the slot's time, its shared id
    deadline_handle: asyncio.TimerHandle | None = None


PROBE_TIMEOUT = 5.0  # s: a first request that never got an answer stops holding its group
MAX_JITTER_SHARE = 0.2  # the margin never widens the window by more than this share ...
MAX_JITTER = 5.0  # ... nor by more than this many seconds


def margin_of(window: float) -> float:
    """Seconds added to the platform's window: 2 % (arrival jitter), at least 50 ms, at most 1 s."""
    return min(1.0, max(0.05, window * 0.02))


class Gate:
    def __init__(self, limit: int, window: float, *, share: float = 1.0,
                 now: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.share = share
        self._now = now
        self._sent: deque[float] = deque()  # send times in the (widened) window, oldest first
        self._outside: deque[float] = deque()  # calls the platform counted that we did not send
        self.penalty_until = -math.inf
        self._queues: dict[str, deque[_Waiter]] = {}  # each client's waiters, oldest first
        self._seq = 0
        self._virtual = 0.0  # the start tag of the last request let through
        self._finish: dict[str, float] = {}  # each client's last finish tag
        self._client_sent: dict[str, deque[float]] = {}  # for quotas only
        self._quota: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.waiting = 0  # live waiters (the heap may hold cancelled ones)
        self.platform_remaining: int | None = None  # the last Remaining the platform sent
        # until the group's first answer, its limit is a guess (limits are customised per
        # app): one request at a time goes, so a wrong guess costs no burst of 429s
        self.learned = False
        self._probe_until = -math.inf
        self.jitter = 0.0  # recent admission-to-answer time: how much arrivals may bunch up
        self.last_stamp = 0.0  # the time of the latest slot taken
        self._jitter_at = now()

    # -- the budget ----------------------------------------------------------------------

    @property
    def local_limit(self) -> int:
        return max(1, math.floor(self.limit * self.share))

    @property
    def span(self) -> float:
        """The window the log keeps: the platform's, widened by twice the recent
        admission-to-answer time (a request's trip to the platform is part of it, and one
        delayed more than the others must not land in the next window's count)."""
        margin = min(2 * self.jitter, self.window * MAX_JITTER_SHARE, MAX_JITTER)
        return self.window + max(margin_of(self.window), margin)

    def _purge(self, now: float) -> None:
        start = now - self.span
        for log in (self._sent, self._outside):
            while log and log[0] <= start:
                log.popleft()

    def used(self) -> int:
        self._purge(self._now())
        return len(self._sent) + len(self._outside)

    def _room(self, now: float) -> bool:
        if now < self.penalty_until or (not self.learned and now < self._probe_until):
            return False
        self._purge(now)
        return len(self._sent) + len(self._outside) < self.local_limit

    def _client_room(self, client: str, now: float) -> bool:
        quota = self._quota.get(client)
        if quota is None:
            return True
        log = self._client_sent.get(client)
        if not log:
            return True
        while log and log[0] <= now - self.span:
            log.popleft()
        return len(log) < quota

    def _record(self, client: str, now: float) -> None:
        self.last_stamp = now  # the slot's time: what restamp() finds it by
        if not self.learned:
            self._probe_until = now + PROBE_TIMEOUT
        self._sent.append(now)
        if client in self._quota:
            self._client_sent.setdefault(client, deque()).append(now)

    def set_quota(self, client: str, quota: int | None) -> None:
        if quota is None:
            self._quota.pop(client, None)
        else:
            self._quota[client] = quota

    # -- what the platform says ----------------------------------------------------------

    @property
    def folds_outside(self) -> bool:
        """Whether this log should count calls the platform saw beyond it (one process only:
        with several, the others' calls are theirs to count)."""
        return self.share >= 1.0

    def answered(self, latency: float) -> None:
        """An answer of this group came back ``latency`` seconds after its admission: the
        first one ends the probing; the slowest recent one widens the window's margin (a
        request admitted early but delayed can arrive together with a later one)."""
        self.learned = True
        now = self._now()
        decayed = self.jitter * 0.5 ** ((now - self._jitter_at) / self.window)  # half-life: W
        self.jitter = min(max(latency, decayed), self.window * MAX_JITTER_SHARE, MAX_JITTER)
        self._jitter_at = now
        self._dispatch()

    def observe(self, rate: RateHeaders) -> None:
        """An answer of this group: its headers correct the limit, window and usage."""
        if rate.limit is not None:
            self.limit = rate.limit
        if rate.window is not None:
            self.window = rate.window
        if rate.remaining is not None:
            self.platform_remaining = rate.remaining
            limit = rate.limit if rate.limit is not None else self.limit
            now = self._now()
            self._purge(now)
            # calls the platform counted beyond ours (an app calling it directly): counted as
            # if made now. With several processes each one's log holds only its own calls, and
            # the others' are theirs to count: only a single process folds them in.
            if self.folds_outside:
                outside = (limit - rate.remaining) - len(self._sent) - len(self._outside)
                for _ in range(max(0, min(outside, limit))):
                    self._outside.append(now)
        self._dispatch()

    def penalize(self, seconds: float) -> None:
        """The platform refused a call with 429: nothing of this group goes for ``seconds``."""
        self.penalty_until = max(self.penalty_until, self._now() + seconds)
        self._schedule()

    # -- admission -----------------------------------------------------------------------

    def try_pass(self, client: str, weight: float) -> bool:
        """Take a slot now if there is one and nobody waits for it."""
        now = self._now()
        if self.waiting or not self._room(now) or not self._client_room(client, now):
            return False
        self._charge(client, weight)
        self._record(client, now)
        return True

    def would_pass(self, client: str) -> bool:
        """Whether a request would go at once (this process's own count)."""
        now = self._now()
        return not self.waiting and Gate._room(self, now) and self._client_room(client, now)

    def force_pass(self, client: str) -> None:
        """Count a send that did not ask (observe mode; a call that turned out to be ours)."""
        self._record(client, self._now())

    def restamp(self, admitted: float) -> float:
        """The request admitted at ``admitted`` leaves only now (its body was read in
        between): its slot counts from now, so a slow body cannot make it arrive at the
        platform together with requests admitted a window later. Returns the new stamp."""
        now = self._now()
        try:
            self._sent.remove(admitted)
        except ValueError:
            return admitted  # already out of the window (or never counted here)
        self._sent.append(now)  # every stamp is <= now: the log stays in order
        return now

    def give_back(self) -> None:
        """Un-count the latest send (it was counted in the wrong group)."""
        if self._sent:
            self._sent.pop()
        self._dispatch()

    async def wait(self, client: str, weight: float, deadline: float
                   ) -> tuple[float, str | None]:
        """Queue until a slot is ours (then it is taken) or ``deadline`` (monotonic) passes:
        the slot's time and its id in a shared window (:mod:`.shared`; else None)."""
        loop = asyncio.get_running_loop()
        self._seq += 1
        waiter = _Waiter(self._seq, client, weight, loop.create_future())
        self._queues.setdefault(client, deque()).append(waiter)
        self.waiting += 1
        waiter.deadline_handle = loop.call_at(
            loop.time() + max(0.0, deadline - self._now()), self._expire, waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:  # the app went away: its place is given up
            self._forget(waiter)
            raise
        finally:
            if waiter.deadline_handle is not None:
                waiter.deadline_handle.cancel()

    def _tag(self, client: str, weight: float) -> float:
        """The finish tag ``client``'s next request would get: clients are charged when
        served (a request refused at its deadline costs its app nothing)."""
        return max(self._virtual, self._finish.get(client, 0.0)) + 1.0 / weight

    def _charge(self, client: str, weight: float) -> None:
        tag = self._tag(client, weight)
        self._finish[client] = tag
        self._virtual = max(self._virtual, tag - 1.0 / weight)

    def _unqueue(self, waiter: _Waiter) -> bool:
        queue = self._queues.get(waiter.client)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.client]
        self.waiting -= 1
        return True

    def _forget(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            waiter.future.cancel()
        self._unqueue(waiter)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done() or not self._unqueue(waiter):
            return
        now = self._now()
        penalty = now < self.penalty_until
        waiter.future.set_exception(RateRefused(self.retry_after(), penalty))

    def retry_after(self) -> float:
        """Seconds until a request arriving now would get a slot, the queue ahead of it
        served first (whole seconds, at least 1)."""
        now = self._now()
        self._purge(now)
        wait = max(0.0, self.penalty_until - now)
        times = sorted([*self._sent, *self._outside])
        limit = self.local_limit
        free = max(0, limit - len(times))  # slots open now
        behind = self.waiting - free  # the newcomer's place once they are taken
        if times and behind >= 0:
            rounds, index = divmod(behind, limit)
            index = min(index, len(times) - 1)
            wait = max(wait, times[index] + self.span * (rounds + 1) - now)
        return float(max(1, math.ceil(wait)))

    def _dispatch(self) -> None:
        """Let waiters through while there is room (see :meth:`_pick`)."""
        now = self._now()
        while self.waiting and self._room(now):
            chosen = self._pick(now)
            if chosen is None:
                break  # everyone waiting is over its quota
            self._grant(chosen, now)
        self._schedule()

    def _pick(self, now: float) -> _Waiter | None:
        """The next waiter: the client with the smallest finish tag (weighted fair queuing),
        its oldest waiter; clients over their quota wait."""
        best: tuple[float, int] | None = None
        chosen: _Waiter | None = None
        for client, queue in self._queues.items():
            if not self._client_room(client, now):
                continue
            head = queue[0]
            key = (self._tag(client, head.weight), head.seq)
            if best is None or key < best:
                best, chosen = key, head
        return chosen

    def _grant(self, waiter: _Waiter, now: float, slot: str | None = None) -> None:
        self._unqueue(waiter)
        self._charge(waiter.client, waiter.weight)
        self._record(waiter.client, now)
        waiter.future.set_result((now, slot))

    def _schedule(self) -> None:
        """Wake up when the next slot frees (the oldest send leaves the window) or the penalty
        ends, while anyone waits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.waiting:
            return
        now = self._now()
        if now < self.penalty_until:
            at = self.penalty_until
        elif not self.learned and now < self._probe_until:
            at = self._probe_until
        elif not self._room(now):
            at = min(log[0] for log in (self._sent, self._outside) if log) + self.span
        else:  # room, but every waiter is over its quota: when the first quota slot frees
            frees = [log[0] + self.span for log in self._client_sent.values() if log]
            at = min(frees) if frees else now + 0.05
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(0.001, at - now), self._dispatch)
