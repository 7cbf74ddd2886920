"""Per-app budget of token-endpoint calls, so the proxy never trips the platform's auth limit.

The platform allows about 5 token calls per minute per app and punishes overruns with a
penalty that every further call restarts. The renewal (:mod:`.renewal`) asks
:meth:`AuthBudget.reserve` before each call; accounts sharing a client id share one budget.
Time is the core's monotonic clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class AuthBudget:
    """At most ``calls`` token-endpoint calls in any sliding ``window`` seconds of ``now``
    (a monotonic clock)."""

    def __init__(self, calls: int, window: float, now: Callable[[], float]) -> None:
        self.calls = calls
        self.window = window
        self._now = now
        self._sent: deque[float] = deque()

    def reserve(self) -> float:
        """Take a slot and return 0.0, or take nothing and return the seconds until one frees.
        A budget of 0 calls means unlimited."""
        if self.calls <= 0:
            return 0.0
        now = self._now()
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) < self.calls:
            self._sent.append(now)
            return 0.0
        return self._sent[0] + self.window - now


class AuthBudgets:
    """One :class:`AuthBudget` per client id."""

    def __init__(self, calls: int, window: float, now: Callable[[], float]) -> None:
        self._calls, self._window, self._now = calls, window, now
        self._budgets: dict[str, AuthBudget] = {}

    def for_client(self, client_id: str) -> AuthBudget:
        budget = self._budgets.get(client_id)
        if budget is None:
            budget = self._budgets[client_id] = AuthBudget(self._calls, self._window,
                                                           self._now)
        return budget
