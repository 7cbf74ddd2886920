"""Slows down addresses that keep presenting unknown client keys (guessing), without affecting
anyone else: after ``limit`` failures within a minute, each further refusal from that address
waits a little longer (up to 2 s). Bounded memory: the oldest addresses are forgotten first."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

WINDOW = 60.0
MAX_DELAY = 2.0
STEP = 0.05  # added per failure beyond the limit
MAX_ADDRESSES = 10_000


class BadKeyThrottle:
    def __init__(self, limit: int) -> None:
        self._limit = limit  # 0: off
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def delay(self, address: str) -> float:
        """Record a failure from ``address``; seconds to wait before answering it."""
        if self._limit <= 0:
            return 0.0
        now = time.monotonic()
        recent = self._failures.pop(address, None) or deque()
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        recent.append(now)
        if len(recent) > self._limit + int(MAX_DELAY / STEP):
            recent.popleft()  # enough to reach the longest delay
        self._failures[address] = recent
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        excess = len(recent) - self._limit
        return 0.0 if excess <= 0 else min(MAX_DELAY, STEP * excess)
