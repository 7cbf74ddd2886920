"""The schedule's arithmetic (refresh-ahead with jitter, keep-alive, back-off) and the clock:
the fake clock fires timers in order, ``within`` times out on the given clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy_addon.tokens.clock import monotonic_at, within
from proxy_addon.tokens.schedule import backoff_delay, keepalive_at, refresh_ahead_at
from proxy_addon.tokens.settings import PoolSettings
from proxy_addon.tokens.token_set import TokenSet

from .fakes import FakeClock, Rig, run

SETTINGS = PoolSettings()


def _tokens(access_ttl: float, refresh_ttl: float | None = None) -> TokenSet:
    return TokenSet("a", 1000.0 + access_ttl, "r",
                    None if refresh_ttl is None else 1000.0 + refresh_ttl, issued_at=1000.0)


def test_refresh_ahead_is_a_minute_early_stretched_by_jitter() -> None:
    tokens = _tokens(3600)
    assert refresh_ahead_at(tokens, SETTINGS, 1.0) == 1000.0 + 3600 - 60
    assert refresh_ahead_at(tokens, SETTINGS, 1.2) == pytest.approx(1000.0 + 3600 - 72)


def test_refresh_ahead_is_capped_to_a_share_of_short_lifetimes() -> None:
    assert refresh_ahead_at(_tokens(100), SETTINGS, 1.0) == pytest.approx(1100.0 - 4.0)
    assert refresh_ahead_at(_tokens(1), SETTINGS, 1.0) == pytest.approx(1001.0 - 0.05)


def test_jitter_spreads_accounts_over_the_window() -> None:
    async def scenario(rig: Rig) -> None:
        instants = set()
        for seed in range(20):
            account = rig.account()
            account._rng = random.Random(seed)
            await account.lease()
            instants.add(round(account._refresh_at - rig.clock.monotonic(), 3))
            account.close()
        assert all(3600 - 72 <= t <= 3600 - 60 for t in instants)
        assert len(instants) > 10

    run(scenario)


def test_keepalive_a_quarter_of_the_refresh_lifetime_early_at_most_36_hours() -> None:
    assert keepalive_at(_tokens(3600, 8 * 3600), SETTINGS) == 1000.0 + 6 * 3600
    assert keepalive_at(_tokens(3600, 7 * 86400), SETTINGS) == 1000.0 + 7 * 86400 - 36 * 3600
    assert keepalive_at(_tokens(3600), SETTINGS) == float("inf")


def test_backoff_doubles_caps_and_honours_retry_after() -> None:
    top = random.Random()
    top.uniform = lambda a, b: b  # type: ignore[method-assign]
    bottom = random.Random()
    bottom.uniform = lambda a, b: a  # type: ignore[method-assign]
    assert [backoff_delay(n, SETTINGS, top, None) for n in (1, 2, 3, 7, 8)] == [
        1.0, 2.0, 4.0, 60.0, 60.0]
    assert backoff_delay(3, SETTINGS, bottom, None) == 3.0
    assert backoff_delay(1, SETTINGS, top, 45.0) == 45.0  # Retry-After wins when longer
    assert backoff_delay(7, SETTINGS, top, 5.0) == 60.0


def test_wall_instants_convert_to_monotonic() -> None:
    clock = FakeClock()
    assert monotonic_at(clock, clock.wall() + 30.0) == clock.monotonic() + 30.0


def test_fake_clock_fires_timers_in_order_and_only_when_due() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        fired: list[str] = []
        clock.call_later(2.0, lambda: fired.append("b"))
        clock.call_later(1.0, lambda: fired.append("a"))
        clock.call_later(3.0, lambda: fired.append("never")).cancel()
        await clock.advance(1.5)
        assert fired == ["a"]
        await clock.advance(2.0)
        assert fired == ["a", "b"] and clock.now == 1003.5

    asyncio.run(scenario())


def test_within_returns_the_result_or_times_out_on_the_clock() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        assert await within(clock, asyncio.sleep(0, "done"), 1.0) == "done"
        never = asyncio.Event()
        waiter = asyncio.ensure_future(within(clock, never.wait(), 5.0))
        await clock.advance(4.9)
        assert not waiter.done()
        await clock.advance(0.2)
        with pytest.raises(TimeoutError):
            await waiter
        assert clock.pending() == []  # the timer is gone

    asyncio.run(scenario())
