"""Fakes for the token core's ports: a clock that moves only when a test advances it (firing due
timers and sleeps in order), a scripted platform, a store that can go down, an observer that
records what it is told. No I/O, no real sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from proxy_addon.config import AccountConfig, parse_config
from proxy_addon.store.base import RecordCodec, StoredTokens, StoreError
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.tokens.account import AccountTokens
from proxy_addon.tokens.budget import AuthBudget
from proxy_addon.tokens.ports import PlatformRefused, PlatformUnreachable
from proxy_addon.tokens.settings import PoolSettings
from proxy_addon.tokens.token_set import TokenSet

WALL_START = 1_700_000_000.0


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic time starts at 1000, wall time at WALL_START; both move only in
    :meth:`advance`, which runs every timer due on the way, in order, letting the event loop
    settle after each."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._offset = WALL_START - self.now
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._offset

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP step); monotonic time does not."""
        self._offset += seconds

    def pending(self) -> list[float]:
        """Delays (from now) of the armed timers."""
        return sorted(t.when - self.now for _, _, t in self._timers if not t.cancelled)

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback()
            await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 30) -> None:
    """Let every runnable task run until it waits on something that needs time."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass
class Refused(PlatformRefused):
    status: int = 400
    error: str = "invalid_grant"
    code: str = ""
    retry_after: float | None = None
    dead: bool = False
    why: str = "refused"

    @property
    def rate_limited(self) -> bool:
        return self.status == 429

    @property
    def refresh_token_dead(self) -> bool:
        return self.dead

    @property
    def hint(self) -> str:
        return self.why


class FakePlatform:
    """Issues token sets (access TTL ``access_ttl``, refresh TTL ``refresh_ttl``) at the
    clock's wall time, numbered a1, a2, ... / r1, r2, ... Each call first takes the next entry
    of ``script`` (an exception to raise, or None to answer normally); ``gate``, when set, holds
    every call until it is set."""

    def __init__(self, clock: FakeClock, access_ttl: float = 3600.0,
                 refresh_ttl: float | None = 7 * 86400.0) -> None:
        self.clock = clock
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self.calls: list[tuple[str, str]] = []  # (login|refresh|revoke, token or account)
        self.script: list[BaseException | None] = []
        self.gate: asyncio.Event | None = None
        self.delay = 0.0  # fake seconds each call takes
        self.session_ids = True  # False: answers without session_id (TokenInfo may lack it)
        self._numbers = itertools.count(1)

    def issue(self) -> TokenSet:
        n, now = next(self._numbers), self.clock.wall()
        return TokenSet(f"a{n}", now + self.access_ttl, f"r{n}",
                        None if self.refresh_ttl is None else now + self.refresh_ttl,
                        issued_at=now, owner_id="owner-1",
                        session_id=f"s{n}" if self.session_ids else "", scope="ReadX")

    async def _answer(self, kind: str, what: str) -> TokenSet:
        self.calls.append((kind, what))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await self.clock.sleep(self.delay)
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        return self.issue()

    async def login(self, account: AccountConfig) -> TokenSet:
        return await self._answer("login", account.name)

    async def refresh(self, account: AccountConfig, refresh_token: str) -> TokenSet:
        return await self._answer("refresh", refresh_token)

    async def revoke(self, account: AccountConfig, token: str) -> None:
        self.calls.append(("revoke", token))

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)


class FakeStore(MemoryStore):
    """The real in-memory store, which raises StoreError on every call while ``down``."""

    def __init__(self) -> None:
        super().__init__(RecordCodec(TokenCipher(None)))
        self.down = False
        self.hold: asyncio.Event | None = None  # when set: generation() hangs until it is set
        self.fail_after_acquire = 0  # store calls that fail right after a lock is taken

    def _check(self) -> None:
        if self.down:
            raise StoreError("store is down (fake)")
        if self.fail_after_acquire < 0:
            self.fail_after_acquire += 1
            raise StoreError("store failed once (fake)")

    # -- faults and views that tests set up (another process, an operator, a failover) -----

    async def holder(self, account: str) -> str | None:
        holder = self._locks.get(account)
        return holder[0] if holder is not None else None

    def steal_lock(self, account: str, owner: str, lease: float = 60.0) -> None:
        """``owner`` holds the renewal lock now (our lease ran out and another took it)."""
        import time

        self._locks[account] = (owner, time.monotonic() + lease)

    def corrupt(self, account: str) -> None:
        """Another writer stored something unreadable, one generation on."""
        generation = self._records.get(account, (0, b""))[0]
        self._records[account] = (generation + 1, b"plain:not json")

    def reset(self) -> None:
        """The store was flushed: every record gone, generations start again."""
        self._records.clear()
        self._locks.clear()

    def roll_back(self, account: str, record: StoredTokens) -> None:
        """A failover lost the writes after ``record``."""
        self._records[account] = (record.generation, self.codec.encode(account, record.tokens))

    async def load(self, account):  # type: ignore[no-untyped-def]
        self._check()
        return await super().load(account)

    async def generation(self, account: str) -> int:
        self._check()
        if self.hold is not None:
            await self.hold.wait()
        return await super().generation(account)

    async def compare_and_set(self, account: str, expected: int, tokens: TokenSet) -> bool:
        self._check()
        return await super().compare_and_set(account, expected, tokens)

    async def acquire_lock(self, account: str, owner: str, lease: float) -> bool:
        self._check()
        taken = await super().acquire_lock(account, owner, lease)
        if taken and self.fail_after_acquire > 0:
            self.fail_after_acquire = -self.fail_after_acquire  # the next calls fail
        return taken

    async def release_lock(self, account: str, owner: str) -> None:
        self._check()
        await super().release_lock(account, owner)


@dataclass
class RecordingObserver:
    seen_secrets: list[str | None] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    renewals: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    lock_waits: list[float] = field(default_factory=list)

    def secrets(self, *values: str | None) -> None:
        self.seen_secrets.extend(values)

    def token_wait(self, account: str, seconds: float) -> None:
        self.waits.append(seconds)

    def renewal(self, account: str, outcome: str) -> None:
        self.renewals.append(outcome)

    def session_lost(self, account: str, reason: str) -> None:
        self.lost.append(reason)

    def store_lock_wait(self, backend: str, seconds: float) -> None:
        self.lock_waits.append(seconds)


def account_config(grant: str = "jwt", name: str = "main") -> AccountConfig:
    entry: dict[str, str] = {"name": name, "client_id": "cid", "client_secret": "cs",
                             "grant": grant}
    if grant == "jwt":
        entry["jwt"] = "the-jwt"
    elif grant == "refresh_token":
        entry["refresh_token"] = "config-refresh-token"
    config = parse_config({"proxy": {"upstream": "http://127.0.0.1:9"}, "accounts": [entry]},
                          "test", {})
    return config.accounts[0]


@dataclass
class Rig:
    clock: FakeClock
    platform: FakePlatform
    store: FakeStore
    observer: RecordingObserver
    settings: PoolSettings

    def account(self, grant: str = "jwt", owner: str = "me", budget: AuthBudget | None = None,
                config: AccountConfig | None = None) -> AccountTokens:
        return AccountTokens(config or account_config(grant), self.platform, self.settings,
                             self.store, budget, clock=self.clock, owner=owner,
                             observer=self.observer, rng=random.Random(7))


def run(test: Callable[[Rig], Coroutine[Any, Any, None]], **settings: Any) -> None:
    """Run ``test`` on a fresh event loop with a fresh rig (unlimited auth budget unless
    ``auth_budget_calls`` is given)."""
    settings.setdefault("auth_budget_calls", 0)

    async def main() -> None:
        clock = FakeClock()
        await test(Rig(clock, FakePlatform(clock), FakeStore(), RecordingObserver(),
                       PoolSettings(**settings)))

    asyncio.run(main())


def unreachable() -> PlatformUnreachable:
    return PlatformUnreachable("cannot reach the fake platform")


def transitions(account: AccountTokens) -> list[tuple[str, str]]:
    """The (from, to) state changes of ``account`` from now on, appended as they happen."""
    seen: list[tuple[str, str]] = []
    change = account._set_state

    def recording(state):  # type: ignore[no-untyped-def]
        before = account.state
        change(state)
        if account.state is not before:
            seen.append((before.value, account.state.value))

    account._set_state = recording  # type: ignore[method-assign]
    return seen
