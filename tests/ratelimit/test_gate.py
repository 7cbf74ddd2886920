"""One (account, group) budget and its weighted fair queue, on the real event loop with
sub-second windows. Assertions are about who goes, in which order, and what is refused — never
about how long anything took."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from proxy_addon.ratelimit.gate import Gate, RateRefused
from proxy_addon.ratelimit.headers import RateHeaders


def _gate(limit: int, window: float, share: float = 1.0) -> Gate:
    """A gate past its probing (its group has answered once)."""
    gate = Gate(limit, window, share=share, now=time.monotonic)
    gate.learned = True
    return gate


def test_until_the_group_answers_once_one_request_goes_at_a_time() -> None:
    """The configured limit is a guess until the platform's headers say it (limits are
    customised per app): a burst must not go out on a guess."""
    gate = Gate(50, 60, now=time.monotonic)
    assert [gate.try_pass("a", 1) for _ in range(3)] == [True, False, False]
    gate.answered(0.01)
    assert [gate.try_pass("a", 1) for _ in range(3)] == [True, True, True]


def test_slots_up_to_the_limit_then_none() -> None:
    gate = _gate(3, 60)
    assert [gate.try_pass("a", 1) for _ in range(4)] == [True, True, True, False]
    assert gate.used() == 3


def test_a_process_keeps_to_its_share() -> None:
    gate = _gate(10, 60, share=1 / 3)
    assert sum(gate.try_pass("a", 1) for _ in range(10)) == 3


def test_weighted_fair_queue_shares_slots_by_weight() -> None:
    async def scenario() -> Counter[str]:
        gate = _gate(4, 0.25)
        for _ in range(4):
            assert gate.try_pass("warm", 1)  # the window is full: everyone queues
        order: list[str] = []
        twelve = asyncio.Event()

        async def one(client: str, weight: float) -> None:
            try:
                await gate.wait(client, weight, time.monotonic() + 30)
                order.append(client)
                if len(order) >= 12:
                    twelve.set()
            except asyncio.CancelledError:
                pass

        tasks = [asyncio.create_task(one(c, w)) for _ in range(24)
                 for c, w in (("heavy-user", 2.0), ("light-user", 1.0))]
        await asyncio.wait_for(twelve.wait(), 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks)
        assert gate.waiting == 0
        return Counter(order[:12])

    shares = asyncio.run(scenario())
    assert shares["heavy-user"] == 8 and shares["light-user"] == 4, shares


def test_nothing_goes_during_a_penalty() -> None:
    async def scenario() -> tuple[float, float]:
        gate = _gate(100, 60)
        gate.penalize(0.3)
        assert not gate.try_pass("a", 1)  # room in the window, but a penalty runs
        await gate.wait("a", 1, time.monotonic() + 10)
        return time.monotonic(), gate.penalty_until

    admitted, penalty_until = asyncio.run(scenario())
    assert admitted >= penalty_until


def test_a_waiter_past_its_deadline_is_refused_with_a_truthful_retry_after() -> None:
    async def scenario() -> RateRefused:
        gate = _gate(2, 30)
        gate.try_pass("a", 1)
        gate.try_pass("a", 1)
        with pytest.raises(RateRefused) as info:
            await gate.wait("b", 1, time.monotonic() + 0.05)
        assert gate.waiting == 0
        return info.value

    refused = asyncio.run(scenario())
    assert not refused.penalty
    assert 29 <= refused.retry_after <= 32  # the oldest send leaves the window in ~30 s


def test_penalty_refusal_says_so() -> None:
    async def scenario() -> RateRefused:
        gate = _gate(5, 1)
        gate.penalize(20)
        with pytest.raises(RateRefused) as info:
            await gate.wait("a", 1, time.monotonic() + 0.05)
        return info.value

    refused = asyncio.run(scenario())
    assert refused.penalty and 19 <= refused.retry_after <= 21


def test_usage_the_platform_counted_beyond_ours_is_respected() -> None:
    gate = _gate(5, 60)
    assert gate.try_pass("a", 1)
    gate.observe(RateHeaders("light", 5, 0, 60.0))  # someone else used the other four
    assert not gate.try_pass("a", 1)
    assert gate.used() == 5


def test_learned_limit_and_window_replace_the_defaults() -> None:
    gate = _gate(50, 60)
    gate.observe(RateHeaders("light", 2, 2, 1.0))
    assert (gate.limit, gate.window) == (2, 1.0)
    assert [gate.try_pass("a", 1) for _ in range(3)] == [True, True, False]


def test_a_quota_caps_one_client_while_others_still_go() -> None:
    gate = _gate(10, 60)
    gate.set_quota("greedy", 2)
    assert [gate.try_pass("greedy", 1) for _ in range(3)] == [True, True, False]
    assert gate.try_pass("polite", 1)


def test_a_cancelled_waiter_gives_its_place_up() -> None:
    async def scenario() -> None:
        gate = _gate(1, 60)
        gate.try_pass("a", 1)
        task = asyncio.create_task(gate.wait("b", 1, time.monotonic() + 30))
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.waiting == 0

    asyncio.run(scenario())


def test_a_slot_is_restamped_when_its_request_leaves() -> None:
    """Regression: the stamp the governor hands out must be the one in the log, or restamping
    silently does nothing and a slow request counts from its admission."""
    async def scenario() -> None:
        gate = _gate(2, 0.3)
        assert gate.try_pass("a", 1)
        first = gate.last_stamp
        await asyncio.sleep(0.2)
        moved = gate.restamp(first)
        assert moved > first
        assert gate.try_pass("a", 1)
        await asyncio.sleep(0.15)  # the first stamp would have left the window by now ...
        assert not gate.try_pass("a", 1)  # ... the restamped one has not
        gate.try_pass("b", 1)
        stamp, _ = await gate.wait("c", 1, time.monotonic() + 5)
        assert gate.restamp(stamp) >= stamp

    asyncio.run(scenario())


def test_retry_after_counts_open_slots_before_old_ones() -> None:
    gate = _gate(100, 60)
    for _ in range(10):
        gate.try_pass("a", 1)
    assert gate.retry_after() == 1.0  # 90 slots open: no reason to wait a window
