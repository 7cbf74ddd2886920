"""The rate-limit governor (issue 17): every account's API budget per group, learned from the
platform's answers, spent fairly by the account's apps, never overrun.

The gateway (:mod:`proxy_addon.gateway.rate_limit`) asks :meth:`Governor.classify` which group
a request counts in (:mod:`.groups`), then :meth:`Governor.admit` for a slot of that group's
:class:`~.gate.Gate` (at once, or after a bounded wait, or :class:`~.gate.RateRefused`); each
answer's headers go to :meth:`Governor.learn` (limits, windows, usage, the operation's real
group) and a platform 429 to :meth:`Governor.penalize`. Budgets start at the configured
defaults (the platform's published ones) and follow the headers from the first answer on.

Modes: ``enforce`` queues and refuses; ``observe`` learns and counts what enforcing would
have done (``would_wait``) but lets everything through; ``off`` is never asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import RateLimitConfig
from .gate import Gate, RateRefused
from .groups import NO_THROTTLING, GroupTable
from .headers import RateHeaders, rate_headers, retry_after

__all__ = ["ClientShare", "GateView", "Governor", "RateRefused"]

# distinct group names learned from answers: a platform has a handful; an upstream answering
# random names must not grow the process (or the metrics) without bound
MAX_GROUPS = 32


@dataclass(frozen=True)
class ClientShare:
    """An app's claim on its account's budgets."""

    name: str
    weight: float = 1.0
    quota: Mapping[str, int] = field(default_factory=dict)  # group key -> per window


@dataclass(frozen=True)
class GateView:
    """One (account, group) budget as metrics and ``tokenproxy status`` show it."""

    account: str
    group: str
    limit: int
    window: float
    used: int
    platform_remaining: int | None
    queued: int
    penalty_left: float


class Governor:
    def __init__(self, config: RateLimitConfig, table: GroupTable, *, processes: int = 1,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.mode = config.mode
        self.table = table
        self.share = 1.0 / max(1, config.replicas * max(1, processes))
        self._now = now
        self._gates: dict[tuple[str, str], Gate] = {}
        self._limits = dict(config.limits)
        self._groups: set[str] = set(self._limits) | set(table.groups())
        self.would_wait = 0  # observe mode: requests enforcing would have held
        self.bad_headers = 0  # answers whose rate-limit headers were (partly) not believed

    def classify(self, method: str, path: str) -> tuple[str, str | None]:
        """(operation key, group key), the group None for operations the platform does not
        count (the spec's NoThrottling)."""
        operation, group = self.table.group(method, path)
        return operation, (None if group == NO_THROTTLING else group)

    def gate(self, account: str, group: str) -> Gate:
        key = (account, group)
        gate = self._gates.get(key)
        if gate is None:
            limit = self._limits.get(group) or min(self._limits.values(), default=10)
            gate = self._gates[key] = Gate(limit, self.config.window, share=self.share,
                                           now=self._now)
        return gate

    def try_admit(self, account: str, group: str, client: ClientShare) -> bool:
        """A slot now (True), or the caller must :meth:`wait`. Observe mode: always True."""
        gate = self.gate(account, group)
        self._apply_quota(gate, group, client)
        if gate.try_pass(client.name, client.weight):
            return True
        if self.mode != "enforce":
            self.would_wait += 1
            gate.force_pass(client.name)
            return True
        return False

    async def wait(self, account: str, group: str, client: ClientShare,
                   deadline: float) -> float:
        """Wait for a slot until ``deadline`` (this clock); the seconds waited, or
        :class:`RateRefused`."""
        gate = self.gate(account, group)
        started = self._now()
        await gate.wait(client.name, client.weight, deadline)
        return self._now() - started

    def restamp(self, account: str, group: str, admitted: float) -> float:
        """The request admitted at ``admitted`` is about to leave: see :meth:`Gate.restamp`."""
        return self.gate(account, group).restamp(admitted)

    def learn(self, account: str, method: str, operation: str, sent_group: str | None,
              headers: Mapping[str, str], latency: float | None = None) -> str | None:
        """An answer's rate-limit headers: the operation's group (learned when it differs
        from what we assumed) and that group's budget; ``latency``: seconds since the request
        was admitted. Returns the answer's group key."""
        rate = rate_headers(headers)
        if not rate.any:  # no word on limits: the defaults stand, the probing ends
            if sent_group is not None and latency is not None:
                self.gate(account, sent_group).answered(latency)
            return None
        if _partly_bad(rate, headers):
            self.bad_headers += 1
        if rate.group is not None and rate.group not in self._groups:
            if len(self._groups) >= MAX_GROUPS:
                self.bad_headers += 1
                rate = RateHeaders(None, rate.limit, rate.remaining, rate.window)
            else:
                self._groups.add(rate.group)
        group = rate.group or sent_group
        if group is None:
            return None
        if rate.group is not None and rate.group != sent_group:
            self.table.learn(method, operation, rate.group)
            if sent_group is not None:  # the slot was taken in the wrong group: move it
                self.gate(account, sent_group).give_back()
                self.gate(account, group).force_pass("")
        gate = self.gate(account, group)
        gate.observe(rate)  # the limit first, then let the waiters through on it
        if latency is not None:
            gate.answered(latency)
            if sent_group is not None and sent_group != group:
                self.gate(account, sent_group).answered(latency)
        return group

    def penalize(self, account: str, group: str, headers: Mapping[str, str]) -> float:
        """A platform 429: the group sends nothing for its Retry-After (capped); the seconds."""
        seconds = retry_after(headers, self.config.default_retry_after,
                              self.config.max_penalty)
        self.gate(account, group).penalize(seconds)
        return seconds

    def now(self) -> float:
        return self._now()

    def deadline(self, arrived_wall: float) -> float:
        """The request's admission deadline on this clock: ``max_wait`` from its arrival."""
        elapsed = max(0.0, time.time() - arrived_wall)
        return self._now() + max(0.0, self.config.max_wait - elapsed)

    def views(self) -> list[GateView]:
        now = self._now()
        return [GateView(account, group, gate.limit, gate.window, gate.used(),
                         gate.platform_remaining, gate.waiting,
                         max(0.0, gate.penalty_until - now))
                for (account, group), gate in sorted(self._gates.items())]

    def _apply_quota(self, gate: Gate, group: str, client: ClientShare) -> None:
        quota = client.quota.get(group)
        if quota is not None:
            gate.set_quota(client.name, quota)


def _partly_bad(rate: RateHeaders, headers: Mapping[str, str]) -> bool:
    """Some X-Rate-Limit-* header was present but not believed."""
    pairs = (("x-rate-limit-group", rate.group), ("x-rate-limit-limit", rate.limit),
             ("x-rate-limit-remaining", rate.remaining), ("x-rate-limit-window", rate.window))
    return any(name in headers and value is None for name, value in pairs)
