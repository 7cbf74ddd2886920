"""Per-(user, app) budget of token-endpoint calls, so the proxy never trips the platform's auth
limit.

The platform counts token calls, like every API call, per (authenticated user, application) pair
and per rate-limit group — the Auth group allows about 5 per minute and punishes overruns with a
penalty that every further call restarts (ringcentral-api-docs ``docs/basics/rate-limits.md``:
"user-level limits", the Auth row of the defaults table). The renewal (:mod:`.renewal`) asks
:meth:`AuthBudget.reserve` before each call; accounts of one user under one client id share a
budget, accounts of different users do not (issue 17: 300 customers under one client id used to
share 5 calls a minute). Time is the core's monotonic clock.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Callable

from ..config import AccountConfig
from ..store import StoreError, TokenStore


class AuthBudget:
    """At most ``calls`` token-endpoint calls in any sliding ``window`` seconds of ``now``
    (a monotonic clock) — in this process, and, with a store that shares rate windows
    (SQLite, Redis), in all processes together (:meth:`take`)."""

    def __init__(self, calls: int, window: float, now: Callable[[], float],
                 store: TokenStore | None = None, key: str = "") -> None:
        self.calls = calls
        self.window = window
        self._configured = (calls, window)
        self._now = now
        self._sent: deque[float] = deque()
        self._store = store if store is not None and store.shares_rate_limits else None
        self._key = key
        self._slots = itertools.count()

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

    async def take(self) -> float:
        """:meth:`reserve` here, then in the store's window shared by every process (its
        clock); 0.0 or the seconds until a slot frees. The store failing leaves this
        process's own count (never more calls than one process alone would make)."""
        wait = self.reserve()
        if wait > 0 or self._store is None or self.calls <= 0:
            return wait
        slot = f"{os.getpid()}-{id(self)}-{next(self._slots)}"
        try:
            shared, _ = await self._store.rate_reserve(self._key, self.calls, self.window, slot)
        except (StoreError, NotImplementedError):
            return 0.0
        if shared > 0 and self._sent:
            self._sent.pop()  # not made: the local slot goes back
        return shared

    def learn(self, limit: int | None, window: float | None) -> None:
        """The token endpoint's X-Rate-Limit-Limit / -Window (the Auth group): the budget
        follows them, never above the configured calls nor below the configured window (the
        operator's cap, e.g. room left for ``check-config``). A budget of 0 stays off."""
        calls, configured_window = self._configured
        if calls <= 0:
            return
        if limit is not None:
            self.calls = max(1, min(calls, limit))
        if window is not None:
            self.window = max(configured_window, window * 1.02 + 0.5)


class AuthBudgets:
    """One :class:`AuthBudget` per (user, client id): see :func:`budget_key`."""

    def __init__(self, calls: int, window: float, now: Callable[[], float],
                 store: TokenStore | None = None) -> None:
        self._calls, self._window, self._now = calls, window, now
        self._store = store
        self._budgets: dict[tuple[str, str], AuthBudget] = {}

    def for_account(self, account: AccountConfig) -> AuthBudget:
        key = budget_key(account)
        budget = self._budgets.get(key)
        if budget is None:
            # the store's key: a digest (no username or credential fingerprint in the store)
            digest = hashlib.sha256("\x00".join(key).encode()).hexdigest()[:24]
            budget = self._budgets[key] = AuthBudget(self._calls, self._window, self._now,
                                                     self._store, f"auth/{digest}")
        return budget


def budget_key(account: AccountConfig) -> tuple[str, str]:
    """(client id, user) as far as the config tells the user apart: the username and extension
    of a password grant, the subject of a JWT credential (its fingerprint when it is not a
    readable JWT), else the account itself (auth-code and refresh-token accounts: one user each
    as far as the proxy can know before the first call)."""
    if account.grant == "password" and account.username:
        user = f"user:{account.username}:{account.extension or ''}"
    elif account.grant == "jwt" and account.jwt:
        user = _jwt_subject(account.jwt.reveal())
    else:
        user = f"account:{account.name}"
    return account.client_id, user


def _jwt_subject(credential: str) -> str:
    parts = credential.split(".")
    if len(parts) == 3:
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
            subject = claims.get("sub") if isinstance(claims, dict) else None
            if isinstance(subject, str | int) and str(subject):
                return f"sub:{subject}"
        except (ValueError, UnicodeDecodeError):
            pass
    return "jwt:" + hashlib.sha256(credential.encode()).hexdigest()[:16]
