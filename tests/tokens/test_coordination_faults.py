"""Issue 15: renewal and store coordination under faults, on the fake clock with injected store
faults (each test names the defect it pins; each failed on the code before its fix).

The faults are the store's and the clocks', never our own code paths: a store whose reply is
lost after it wrote, a store read that stalls while another process moves on, a store that
fails once, hosts whose wall clocks disagree, a wall clock that steps back, a store that was
reset or lost its newest write in a failover."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from proxy_addon.store.base import StoredTokens
from proxy_addon.tokens.account import AccountTokens
from proxy_addon.tokens.failures import Reason, TokenUnavailable
from proxy_addon.tokens.token_set import TokenSet

from .fakes import FakeClock, FakePlatform, Rig, run, unreachable


class LostReplyStore:
    """Wraps the rig's store: the next ``compare_and_set`` writes, then reports failure, as
    a Redis script re-sent by the client after a timeout sees its own write."""

    def __init__(self, rig: Rig) -> None:
        self.armed = False
        store = rig.store
        original = store.compare_and_set

        async def compare_and_set(account: str, expected: int, tokens: TokenSet) -> bool:
            done = await original(account, expected, tokens)
            if done and self.armed:
                self.armed = False
                return False  # the reply was lost; the retry found its own write
            return done

        store.compare_and_set = compare_and_set  # type: ignore[method-assign]


def test_defect1_own_write_seen_by_a_retried_write_is_ours_and_never_revoked() -> None:
    async def scenario(rig: Rig) -> None:
        rig.platform.session_ids = False  # TokenInfo without session_id
        lost = LostReplyStore(rig)
        account = rig.account()
        assert await account.lease() == ("a1", 1)
        account.release(1)
        lost.armed = True
        assert await account.rejected(1, "OAU-210") == ("a2", 2)
        assert rig.platform.count("revoke") == 0  # our own pair is not "another's win"
        stored = await rig.store.load("main")
        assert stored is not None and stored.generation == 2
        assert stored.tokens.access_token == "a2"

    run(scenario)


def test_defect1_a_pair_that_really_lost_is_revoked_by_value() -> None:
    async def scenario(rig: Rig) -> None:
        rig.platform.session_ids = False
        account = rig.account(owner="p1")
        await account.lease()
        account.release(1)
        stored = await rig.store.load("main")
        assert stored is not None
        platform2 = FakePlatform(rig.clock)
        platform2._numbers = iter(range(100, 200))  # type: ignore[assignment]
        # another process's pair, stored meanwhile in the same record lineage
        other = dataclasses.replace(platform2.issue(), epoch=stored.tokens.epoch)
        original = rig.store.compare_and_set

        async def race(name: str, expected: int, tokens: TokenSet) -> bool:
            rig.store.compare_and_set = original  # type: ignore[method-assign]
            assert await original(name, expected, other)
            return await original(name, expected, tokens)

        rig.store.compare_and_set = race  # type: ignore[method-assign]
        assert await account.rejected(1, "OAU-210") == (other.access_token, 2)
        await rig.clock.advance(0)
        assert ("revoke", "r2") in rig.platform.calls  # ours, by value: r2 is not theirs

    run(scenario)


def test_defect3_ownership_is_checked_again_right_before_the_token_call() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        await account.lease()
        account.release(1)
        stall = asyncio.Event()
        original = rig.store.generation
        stalled: list[bool] = []

        async def slow_generation(name: str) -> int:
            generation = await original(name)
            if await rig.store.holder(name) == "p1" and not stalled:
                stalled.append(True)
                await stall.wait()  # one slow store call: longer than the lease
            return generation

        rig.store.generation = slow_generation  # type: ignore[method-assign]
        waiter = asyncio.ensure_future(account.rejected(1, "OAU-210"))
        await rig.clock.advance(0.1)
        assert stalled
        # the lease ran out meanwhile, and another process took the lock
        rig.store.steal_lock("main", "p2")
        stall.set()
        await rig.clock.advance(0.1)
        assert rig.platform.count("refresh") == 0  # p1 knows it lost the lock: no call
        newer = FakePlatform(rig.clock).issue()
        assert await rig.store.compare_and_set("main", 1, newer)  # p2's renewal lands
        await rig.clock.advance(0.2)
        assert await waiter == (newer.access_token, 2)
        assert rig.platform.count("refresh") == 0

    run(scenario)


def test_defect3_waiting_for_another_holder_is_labelled_as_such() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        rig.store.steal_lock("main", "p2", lease=3600.0)
        waiter = asyncio.ensure_future(account.lease(rig.clock.monotonic() + 3.0))
        await rig.clock.advance(3.5)
        failure = waiter.exception()
        assert isinstance(failure, TokenUnavailable)
        assert failure.reason is Reason.LOCK_HELD  # not "the store is unavailable"

    run(scenario, token_wait_timeout=3.0)


def test_defect3_a_live_holder_working_longer_than_the_lease_is_waited_for() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        rig.store.steal_lock("main", "p2", lease=3600.0)  # p2 alive, extending its lease
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(9.0)  # the token endpoint is slow for p2: 9 s > lease + 1
        assert not waiter.done()
        newer = FakePlatform(rig.clock).issue()
        assert await rig.store.compare_and_set("main", 0, newer)
        await rig.clock.advance(0.2)
        assert await waiter == (newer.access_token, 1)
        assert rig.platform.calls == []

    run(scenario, token_wait_timeout=30.0, lock_lease=6.0, token_call_timeout=20.0)


def test_defect9_a_store_error_right_after_taking_the_lock_releases_it() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        rig.store.fail_after_acquire = 1
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(0.1)
        assert await rig.store.holder("main") is None  # released, not held for a lease
        waiter.cancel()

    run(scenario)


def test_defect9_a_notification_during_a_read_is_not_dropped() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        await account.lease()
        account.release(1)
        other = FakePlatform(rig.clock)
        other._numbers = iter(range(100, 200))  # type: ignore[assignment]
        gate = asyncio.Event()
        original = rig.store.load

        async def stalled_load(name: str) -> StoredTokens | None:
            record = await original(name)
            await gate.wait()
            return record

        rig.store.load = stalled_load  # type: ignore[method-assign]
        assert await rig.store.compare_and_set("main", 1, other.issue())
        account.notice(2)
        await rig.clock.advance(0)  # the read of generation 2 is under way
        assert await rig.store.compare_and_set("main", 2, other.issue())
        account.notice(3)  # arrives while that read is in flight
        gate.set()
        await rig.clock.advance(0)
        assert account.generation == 3
        assert account.try_lease() == ("a101", 3)

    run(scenario)


def test_defect9_an_unsaved_pair_is_saved_later_when_the_generation_kept_moving() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(owner="p1")
        await account.lease()
        account.release(1)
        original = rig.store.compare_and_set
        moving = [3]

        async def busy(name: str, expected: int, tokens: TokenSet) -> bool:
            if moving[0] > 0:  # another writer bumps the generation under us each time
                moving[0] -= 1
                rig.store.corrupt("main")
                return False
            return await original(name, expected, tokens)

        rig.store.compare_and_set = busy  # type: ignore[method-assign]
        assert await account.rejected(1, "OAU-210") == ("a2", account.generation)
        await rig.clock.advance(5.0)
        stored = await rig.store.load("main")
        assert stored is not None and stored.tokens.access_token == "a2"

    run(scenario)


class SkewedClock:
    """Another host's clock: the same monotonic time, a wall clock ``skew`` seconds off."""

    def __init__(self, base: FakeClock, skew: float) -> None:
        self.base, self.skew = base, skew

    def monotonic(self) -> float:
        return self.base.monotonic()

    def wall(self) -> float:
        return self.base.wall() + self.skew

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]):  # type: ignore[no-untyped-def]
        return self.base.call_later(delay, callback)


def process_behind(rig: Rig, owner: str, skew: float) -> AccountTokens:
    """Another process on a host whose wall clock is ``skew`` seconds off, sharing the
    store; its platform numbers its tokens from 100 (a100, r100, ...)."""
    behind = SkewedClock(rig.clock, skew)
    platform = FakePlatform(behind)  # type: ignore[arg-type]
    platform._numbers = iter(range(100, 200))  # type: ignore[assignment]
    rig.platform = platform
    account = rig.account(owner=owner)
    account._clock = behind  # type: ignore[assignment]
    return account


def test_defect4_a_newer_generation_wins_even_from_a_host_whose_clock_is_behind() -> None:
    async def scenario(rig: Rig) -> None:
        p1 = rig.account(owner="p1")
        await p1.lease()
        p1.release(1)
        p2 = process_behind(rig, "p2", -1800.0)
        await p2.start()
        await p2.rejected(1, "OAU-210")  # p2 rotates: generation 2, issued "earlier"
        p1.notice(2)
        await rig.clock.advance(0)
        assert p1.generation == 2 and p1.try_lease() == ("a100", 2)

    run(scenario)


def test_defect4_a_reset_store_is_recognised_by_its_epoch() -> None:
    async def scenario(rig: Rig) -> None:
        p1 = rig.account(owner="p1")
        await p1.lease()
        p1.release(1)
        await p1.rejected(1, "OAU-210")
        await p1.rejected(2, "OAU-210")  # p1 at generation 3
        rig.store.reset()  # flushed: generations start again
        p2 = process_behind(rig, "p2", -1800.0)
        await p2.lease()  # p2 logs in after the reset: generation 1 of a new epoch
        p1.notice(1)
        await rig.clock.advance(0)
        assert p1.try_lease() == ("a100", 1)

    run(scenario)


def test_defect4_a_store_that_lost_the_newest_write_gets_it_back() -> None:
    async def scenario(rig: Rig) -> None:
        p1 = rig.account(owner="p1")
        await p1.lease()
        p1.release(1)
        before = await rig.store.load("main")
        await p1.rejected(1, "OAU-210")  # generation 2: a2/r2
        assert before is not None
        rig.store.roll_back("main", before)  # a failover lost the newest write
        p1.notice(0)  # re-read everything (the watcher reconnected)
        await rig.clock.advance(0.5)
        stored = await rig.store.load("main")
        assert stored is not None and stored.tokens.refresh_token == "r2"
        assert stored.generation >= 2
        assert p1.try_lease() == ("a2", p1.generation)

    run(scenario)


def test_defect5_a_backwards_wall_step_does_not_delay_refresh_ahead_past_expiry() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()
        account.release(1)  # used: refresh-ahead is due 60-72 s before expiry
        await rig.clock.advance(10)
        rig.clock.step_wall(-3600.0)  # NTP steps the wall clock back an hour
        rig.platform.script = [unreachable()]  # the first refresh-ahead fails: back-off
        await rig.clock.advance(3600 - 10 - 15)  # 15 s before the token really expires
        assert rig.platform.count("refresh") == 2  # retried after the back-off, in time
        assert account.try_lease() == ("a2", 2)

    run(scenario)


def test_store_errors_do_not_escape_from_a_background_notice() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()
        account.release(1)
        rig.store.down = True
        account.notice(0)
        await rig.clock.advance(0.1)
        rig.store.down = False
        assert account.try_lease() == ("a1", 1)

    run(scenario)
