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
from dataclasses import dataclass, field, replace

from ..config import RateLimitConfig
from .gate import Gate, RateRefused
from .groups import NO_THROTTLING, GroupTable
from .headers import RateHeaders, rate_headers, retry_after
from .shared import RateWindows, SharedGate

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
                 windows: RateWindows | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.mode = config.mode
        self.table = table
        self.processes = max(1, config.replicas * max(1, processes))  # configured N
        self.processes_seen = 1  # processes heartbeating in the store (note_processes)
        # budgets counted in the store (shared by every process), or each process its 1/N
        self._windows = windows if windows is not None and windows.shares_rate_limits else None
        self.share = 1.0 if self._windows is not None else 1.0 / self.processes
        self._now = now
        self._gates: dict[tuple[str, str], Gate] = {}
        self._limits = dict(config.limits)
        self._groups: set[str] = set(self._limits) | set(table.groups())
        # told of each (account, group) budget as it appears (metrics create its series at 0,
        # so the first platform 429 shows as an increase, not as a series appearing at 1)
        self.on_gate: Callable[[str, str], None] | None = None
        self.would_wait = 0  # observe mode: requests enforcing would have held
        self.bad_headers = 0  # answers whose rate-limit headers were (partly) not believed

    def settings_changed(self, config: RateLimitConfig) -> None:
        """A reload's ``[rate_limits]``: ``mode`` (enforce <-> observe), ``max_wait`` and the
        penalty bounds apply from the next request; ``limits`` to groups first met from now on
        (a group already met follows the platform's headers). ``window`` and ``replicas``
        shape the budgets themselves: a restart applies them (see cli/reload.py)."""
        self.config = replace(config, window=self.config.window, replicas=self.config.replicas)
        self.mode = config.mode
        self._limits = dict(config.limits)
        self._groups |= set(self._limits)

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
            if self._windows is not None:
                gate = SharedGate(f"{account}/{group}", self._windows, limit,
                                  self.config.window, fallback_share=self.fallback_share,
                                  now=self._now)
            else:
                gate = Gate(limit, self.config.window, share=self.share, now=self._now)
            self._gates[key] = gate
            if self.on_gate is not None:
                self.on_gate(account, group)
        return gate

    @property
    def shared(self) -> bool:
        return self._windows is not None

    def fallback_share(self) -> float:
        """A process's part of a budget while the store is away: 1/N, N the larger of the
        configured processes and those the store last saw."""
        return 1.0 / max(self.processes, self.processes_seen)

    def note_processes(self, count: int) -> None:
        self.processes_seen = max(1, count)

    def try_admit(self, account: str, group: str, client: ClientShare) -> float | None:
        """A slot now: its time (for :meth:`restamp`); None: the caller must :meth:`wait`.
        Observe mode: always a slot."""
        gate = self.gate(account, group)
        self._apply_quota(gate, group, client)
        if self.mode != "enforce":  # observe: count what enforcing would do, hold nothing
            if not gate.would_pass(client.name):
                self.would_wait += 1
            gate.force_pass(client.name)
            return gate.last_stamp
        return gate.last_stamp if gate.try_pass(client.name, client.weight) else None

    async def wait(self, account: str, group: str, client: ClientShare,
                   deadline: float) -> tuple[float, float, str | None]:
        """Wait for a slot until ``deadline`` (this clock): the seconds waited, the slot's
        time and its id in the store's window (shared budgets); or :class:`RateRefused`."""
        gate = self.gate(account, group)
        self._apply_quota(gate, group, client)
        started = self._now()
        stamp, slot = await gate.wait(client.name, client.weight, deadline)
        return self._now() - started, stamp, slot

    def restamp(self, account: str, group: str, admitted: float,
                slot: str | None = None) -> float:
        """The request admitted at ``admitted`` is about to leave: see :meth:`Gate.restamp`."""
        gate = self.gate(account, group)
        if slot is not None and isinstance(gate, SharedGate):
            gate.restamp_slot(slot)
        return gate.restamp(admitted)

    def learn(self, account: str, method: str, operation: str, sent_group: str | None,
              headers: Mapping[str, str], latency: float | None = None,
              status: int = 200) -> str | None:
        """An answer's rate-limit headers: the operation's group (learned when it differs
        from what we assumed) and that group's budget; ``latency``: seconds since the request
        was admitted. Returns the answer's group key."""
        rate = rate_headers(headers)
        if status == 429 and rate.remaining is not None:
            # "Remaining: 0" on a refusal says "penalised", not "used up by others": read as
            # usage it would fill the window with calls nobody made
            rate = RateHeaders(rate.group, rate.limit, None, rate.window)
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
        """The client's cap in this group as its config says now: a reload that raises,
        lowers or removes it applies at its next request."""
        gate.set_quota(client.name, client.quota.get(group))


def _partly_bad(rate: RateHeaders, headers: Mapping[str, str]) -> bool:
    """Some X-Rate-Limit-* header was present but not believed."""
    pairs = (("x-rate-limit-group", rate.group), ("x-rate-limit-limit", rate.limit),
             ("x-rate-limit-remaining", rate.remaining), ("x-rate-limit-window", rate.window))
    return any(name in headers and value is None for name, value in pairs)
