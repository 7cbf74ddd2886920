"""Slows down guessing, without affecting anyone else. One instance is shared by :mod:`.identify`
(unknown client keys, unknown virtual tokens) and the login interceptor (failed logins).

Failures are counted per source address and, for logins, per configured client id, over a
sliding minute. Key guessing: after ``limit`` failures, each further refusal from that address
waits a little longer (up to 2 s). Logins: beyond ``limit`` failures of the address, or
``client_limit`` of the client id, logins are refused (429, :meth:`retry_after`) without any
credential being checked, as the platform's own auth rate limit does. Bounded memory: the
oldest addresses are forgotten first; client ids are only those of the config."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

WINDOW = 60.0
MAX_DELAY = 2.0
STEP = 0.05  # added per failure beyond the limit
MAX_ADDRESSES = 10_000


class BadKeyThrottle:
    def __init__(self, limit: int, client_limit: int = 0) -> None:
        self._limit = limit  # 0: off
        self.client_limit = client_limit  # 0: off; set by the login interceptor
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._clients: dict[str, deque[float]] = {}

    def delay(self, address: str, client_id: str | None = None) -> float:
        """Record a failure from ``address`` (and of ``client_id``, a configured client id);
        seconds to wait before answering it."""
        now = time.monotonic()
        if client_id is not None and self.client_limit > 0:
            recent = self._recent(self._clients.get(client_id), now)
            recent.append(now)
            while len(recent) > self.client_limit:
                recent.popleft()  # the newest `client_limit` decide
            self._clients[client_id] = recent
        if self._limit <= 0:
            return 0.0
        recent = self._recent(self._failures.pop(address, None), now)
        recent.append(now)
        if len(recent) > self._limit + int(MAX_DELAY / STEP):
            recent.popleft()  # enough to reach the longest delay
        self._failures[address] = recent
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        excess = len(recent) - self._limit
        return 0.0 if excess <= 0 else min(MAX_DELAY, STEP * excess)

    def retry_after(self, address: str, client_id: str | None = None) -> float:
        """Seconds until ``address`` (or ``client_id``) is below its limit again; 0 when it is
        (a login may be checked)."""
        now = time.monotonic()
        wait = 0.0
        for recent, limit in ((self._failures.get(address), self._limit),
                              (self._clients.get(client_id or ""), self.client_limit)):
            if limit <= 0 or not recent:
                continue
            recent = self._recent(recent, now)
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + WINDOW - now)
        return wait

    @staticmethod
    def _recent(recent: deque[float] | None, now: float) -> deque[float]:
        recent = recent if recent is not None else deque()
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        return recent
