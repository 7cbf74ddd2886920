"""Rate limiting: the enforced token-endpoint limiter and the reported-only API counters.

Token endpoint (enforced, per client_id): a sliding window of ``rate`` calls per ``window``
seconds. The call that exceeds it, and every call made during the following ``penalty``
seconds, answers 429 and (re)starts the penalty, so retry storms lock the app out.

API groups (reported only, in the ``X-Rate-Limit-*`` headers): Light 50, Medium 40, Heavy 10,
Auth 5 requests per 60 s fixed window, counted per key (the token's client/owner).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

API_GROUPS = {"Light": 50, "Medium": 40, "Heavy": 10, "Auth": 5}
API_WINDOW = 60


@dataclass
class _Bucket:
    calls: deque[float] = field(default_factory=deque)
    penalty_until: float = float("-inf")


class AuthRateLimiter:
    """Sliding-window limiter with a penalty that restarts on every call made during it."""

    _MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def hit(self, key: str, rate: int, window: float, penalty: float) -> float | None:
        """Record one call; None if allowed, else the seconds the caller should wait."""
        if rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket()
        if now < bucket.penalty_until:
            bucket.penalty_until = now + penalty
            return penalty
        while bucket.calls and bucket.calls[0] <= now - window:
            bucket.calls.popleft()
        if len(bucket.calls) >= rate:
            bucket.penalty_until = now + penalty
            bucket.calls.clear()
            return penalty
        bucket.calls.append(now)
        return None

    def remaining(self, key: str, rate: int, window: float) -> int:
        """Calls still allowed in the current window (0 during a penalty)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return rate
        now = self._clock()
        if now < bucket.penalty_until:
            return 0
        return max(0, rate - sum(1 for t in bucket.calls if t > now - window))

    def reset(self) -> None:
        self._buckets.clear()


class ApiRateCounter:
    """Fixed 60 s windows per (key, group); only reports, never refuses."""

    _MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}

    def count(self, key: str, group: str) -> dict[str, str]:
        """Count one request and return its ``X-Rate-Limit-*`` headers."""
        limit = API_GROUPS[group]
        slot = int(self._clock() // API_WINDOW)
        start, used = self._windows.get((key, group), (slot, 0))
        if start != slot:
            used = 0
        used += 1
        if len(self._windows) >= self._MAX_KEYS:
            self._windows.clear()
        self._windows[(key, group)] = (slot, used)
        return headers(group, limit, limit - used, API_WINDOW)


def headers(group: str, limit: int, remaining: int, window: float) -> dict[str, str]:
    return {
        "X-Rate-Limit-Group": group,
        "X-Rate-Limit-Limit": str(limit),
        "X-Rate-Limit-Remaining": str(max(0, remaining)),
        "X-Rate-Limit-Window": str(max(1, round(window))),
    }
