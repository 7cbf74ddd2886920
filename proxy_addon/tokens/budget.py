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
import json
from collections import deque
from collections.abc import Callable

from ..config import AccountConfig


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
    """One :class:`AuthBudget` per (user, client id): see :func:`budget_key`."""

    def __init__(self, calls: int, window: float, now: Callable[[], float]) -> None:
        self._calls, self._window, self._now = calls, window, now
        self._budgets: dict[tuple[str, str], AuthBudget] = {}

    def for_account(self, account: AccountConfig) -> AuthBudget:
        key = budget_key(account)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = AuthBudget(self._calls, self._window, self._now)
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
