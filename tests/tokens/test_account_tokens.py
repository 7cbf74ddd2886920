"""AccountTokens' behaviour on a fake clock and fake ports: leases and drain, single-flight
renewal, generation fencing, deadlines, fallback to the old token, the store (down, lock held,
superseded), the budget and back-off with Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from proxy_addon.tokens.budget import AuthBudget
from proxy_addon.tokens.failures import Reason, TokenUnavailable
from proxy_addon.tokens.states import AccountState

from .fakes import WALL_START, Refused, Rig, run


def test_fresh_token_is_leased_without_waiting_and_counted_per_generation() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        assert account.try_lease() is None  # nothing yet: the slow path must log in
        first = await account.lease()
        assert account.try_lease() == first == ("a1", 1)
        assert account.snapshot()["in_flight"] == 2
        account.release(1)
        account.release(1)
        assert account.snapshot()["in_flight"] == 0
        assert rig.platform.count("login") == 1

    run(scenario)


def test_concurrent_waiters_share_one_platform_call() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        rig.platform.gate = asyncio.Event()
        waiters = [asyncio.ensure_future(account.lease()) for _ in range(50)]
        await rig.clock.advance(0.5)
        rig.platform.gate.set()
        leases = await asyncio.gather(*waiters)
        assert set(leases) == {("a1", 1)}
        assert len(rig.platform.calls) == 1
        assert len(rig.observer.waits) == 50

    run(scenario)


def test_a_stale_generations_401_does_not_renew_again() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, old = await account.lease()
        _, same = await account.lease()  # two requests in flight on generation 1
        assert await account.rejected(old, "OAU-210") == ("a2", 2)  # the first 401 renews
        assert await account.rejected(same, "OAU-210") == ("a2", 2)  # the second does not
        assert rig.platform.count("refresh") == 1
        account.note_rejected(old, "OAU-210")  # a stale streamed 401: nothing either
        await rig.clock.advance(0)
        assert rig.platform.count("refresh") == 1

    run(scenario)


def test_note_rejected_renews_in_the_background() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()
        account.note_rejected(generation, "OAU-128")
        assert account.try_lease() is None  # the rejected token is not handed out again
        await rig.clock.advance(0)
        assert account.try_lease() == ("a2", 2)

    run(scenario)


def test_oau_213_is_a_lost_session_and_logs_in_anew() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()
        assert await account.rejected(generation, "OAU-213") == ("a2", 2)
        assert rig.observer.lost == ["revoked_or_evicted"]
        assert [kind for kind, _ in rig.platform.calls] == ["login", "login"]  # no refresh

    run(scenario)


def test_refresh_ahead_drains_in_flight_requests_first() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()  # in flight, never released yet
        await rig.clock.advance(rig.clock.pending()[0])  # refresh-ahead is due: drain begins
        assert 3600 - 72 <= rig.clock.now - 1000 <= 3600 - 60  # 60 s before expiry, jittered
        assert account.state is AccountState.HEALTHY and rig.platform.count("refresh") == 0
        assert account.try_lease() is None  # new requests wait for the new generation
        account.release(generation)  # the last request on generation 1 is answered
        await rig.clock.advance(0)
        assert rig.platform.count("refresh") == 1
        assert account.try_lease() == ("a2", 2)

    run(scenario)


def test_drain_gives_up_after_drain_timeout() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()  # never released
        await rig.clock.advance(rig.clock.pending()[0])
        await rig.clock.advance(1.9)
        assert rig.platform.count("refresh") == 0
        await rig.clock.advance(0.2)  # drain_timeout 2 s
        assert rig.platform.count("refresh") == 1

    run(scenario)


def test_an_unused_token_is_not_refreshed_ahead_but_kept_alive() -> None:
    async def scenario(rig: Rig) -> None:
        rig.platform.refresh_ttl = 8 * 3600.0  # keep-alive at 1/4 of it before expiry: 6 h
        account = rig.account()
        _, generation = await account.lease()
        account.release(generation)
        await rig.clock.advance(3600 - 59)  # used: refreshed ahead
        assert rig.platform.count("refresh") == 1
        await rig.clock.advance(3600 - 59)  # generation 2 never used: no refresh-ahead
        assert rig.platform.count("refresh") == 1 and account.try_lease() is None
        await rig.clock.advance(6 * 3600 - 2 * (3600 - 59) - 1)
        assert rig.platform.count("refresh") == 1
        await rig.clock.advance(2 * (3600 - 59) + 2)  # 6 h after generation 2: keep-alive
        assert rig.platform.count("refresh") == 2
        assert rig.platform.calls[-1] == ("refresh", "r2")

    run(scenario)


def test_deadline_counts_from_the_wall_clock_arrival() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        arrived = rig.clock.wall() - 4.0  # the request arrived 4 s ago (mitmproxy's stamp)
        assert account.deadline(arrived) == pytest.approx(rig.clock.monotonic() + 6.0)
        rig.platform.gate = asyncio.Event()
        waiter = asyncio.ensure_future(account.lease(account.deadline(arrived)))
        await rig.clock.advance(5.9)
        assert not waiter.done()
        await rig.clock.advance(0.2)
        with pytest.raises(TokenUnavailable) as info:
            await waiter
        assert info.value.reason is Reason.TIMEOUT
        assert (info.value.waited, info.value.retry_after) == (10.0, 1.0)
        assert account.state is AccountState.REFRESHING  # the renewal itself goes on
        rig.platform.gate.set()
        await rig.clock.advance(0)
        assert account.try_lease() == ("a1", 1)
        assert len(rig.platform.calls) == 1

    run(scenario)


def test_the_old_token_is_served_while_renewals_fail() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()
        rig.platform.script = [Refused(503, "", "") for _ in range(10)]
        await rig.clock.advance(3600 - 59)  # refresh-ahead fails
        assert account.state is AccountState.BACKING_OFF
        assert account.can_serve()
        assert await account.lease() == ("a1", 1)  # still valid for a minute: served
        await rig.clock.advance(60)  # expired now
        assert not account.can_serve()
        with pytest.raises(TokenUnavailable) as info:
            await account.lease(rig.clock.monotonic())
        assert info.value.reason is Reason.ENDPOINT_FAILED  # the last failure, not a timeout

    run(scenario)


def test_back_off_honours_retry_after() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        rig.platform.script = [Refused(429, "", "CMN-301", retry_after=45.0)]
        with pytest.raises(TokenUnavailable) as info:
            await account.lease()
        assert info.value.reason is Reason.RATE_LIMITED
        assert info.value.retry_after == pytest.approx(45.0)
        await rig.clock.advance(30.0)
        with pytest.raises(TokenUnavailable) as again:  # 15 s left > the 10 s wait
            await account.lease()
        assert again.value.retry_after == pytest.approx(15.0)
        assert len(rig.platform.calls) == 1
        await rig.clock.advance(10.0)
        waiter = asyncio.ensure_future(account.lease())  # 5 s left < the wait: it waits
        await rig.clock.advance(4.9)
        assert not waiter.done() and len(rig.platform.calls) == 1
        await rig.clock.advance(0.2)
        assert await waiter == ("a1", 1)

    run(scenario)


def test_exponential_back_off_grows_between_failures() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        waits = []
        for _ in range(4):
            rig.platform.script = [Refused(502, "", "")]
            with pytest.raises(TokenUnavailable) as info:
                await account.lease(rig.clock.monotonic() + 0.01)
            assert info.value.retry_after is not None
            waits.append(info.value.retry_after)
            await rig.clock.advance(info.value.retry_after)
        assert [round(w) for w in waits] != [1, 1, 1, 1]
        for n, wait in enumerate(waits):
            assert 0.75 * 2 ** n - 1e-9 <= wait <= 2 ** n + 1e-9, waits

    run(scenario)


def test_budget_exhaustion_refuses_calls_until_a_slot_frees() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account(budget=AuthBudget(1, 60.0, rig.clock.monotonic))
        _, generation = await account.lease()
        with pytest.raises(TokenUnavailable) as info:
            await account.rejected(generation, "OAU-210")
        assert info.value.reason is Reason.BUDGET_EXHAUSTED
        assert info.value.retry_after == pytest.approx(60.0)
        assert len(rig.platform.calls) == 1 and account.token_calls == 1
        account.release(generation)  # the refused request was answered
        await rig.clock.advance(60.0)
        assert await account.lease() == ("a2", 2)

    run(scenario)


def test_a_new_pair_is_stored_before_it_is_used() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()
        record = await rig.store.load("main")
        assert record is not None and (record.generation, record.tokens.access_token) == (1, "a1")

    run(scenario)


def test_a_refused_refresh_adopts_the_newer_pair_in_the_store() -> None:
    async def scenario(rig: Rig) -> None:
        ours, theirs = rig.account(owner="a"), rig.account(owner="b")
        _, generation = await ours.lease()
        await theirs.start()  # both hold generation 1
        assert await ours.rejected(generation, "OAU-210") == ("a2", 2)  # ours rotates it
        rig.platform.script = [Refused(400, "invalid_grant", "OAU-211", dead=True)]
        assert await theirs.rejected(1, "OAU-210") == ("a2", 2)  # refused, then adopted
        assert rig.platform.count("login") == 1  # no new session
        assert rig.observer.lost == []

    run(scenario)


def test_store_down_at_save_serves_from_memory_and_saves_later() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()
        await rig.clock.advance(10.0)
        store = rig.store
        real_cas = store.compare_and_set

        async def failing_cas(*args):  # type: ignore[no-untyped-def]
            store.down = True  # the store dies between the lock and the write
            return await real_cas(*args)

        store.compare_and_set = failing_cas  # type: ignore[method-assign]
        assert await account.rejected(generation, "OAU-210") == ("a2", 2)
        store.compare_and_set = real_cas  # type: ignore[method-assign]
        store.down = False
        assert (await store.load("main")).tokens.access_token == "a1"  # type: ignore[union-attr]
        await rig.clock.advance(1.0)  # store_retry
        record = await store.load("main")
        assert record is not None and record.tokens.access_token == "a2"
        assert account.generation == record.generation == 2

    run(scenario)


def test_notice_adopts_another_process_pair_without_a_call() -> None:
    async def scenario(rig: Rig) -> None:
        ours, theirs = rig.account(owner="a"), rig.account(owner="b")
        _, generation = await ours.lease()
        await theirs.start()
        await ours.rejected(generation, "OAU-210")
        calls = len(rig.platform.calls)
        theirs.notice(2)
        await rig.clock.advance(0)
        assert theirs.try_lease() == ("a2", 2)
        assert len(rig.platform.calls) == calls

    run(scenario)


def test_snapshot_reports_times_left_from_the_wall_clock() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        await account.lease()
        await rig.clock.advance(600)
        snap = account.snapshot()
        assert snap["access_expires_in"] == pytest.approx(3000.0)
        assert snap["refresh_expires_in"] == pytest.approx(7 * 86400.0 - 600)
        assert snap["last_refresh"] == pytest.approx(WALL_START)
        assert (snap["state"], snap["generation"], snap["token_calls"]) == ("healthy", 1, 1)
        assert "a1" not in repr(snap)

    run(scenario)


def test_owner_id_and_scope_log_in_first() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        assert account.known_owner() == "" and account.scope() == ""
        assert await account.owner_id() == "owner-1"
        assert account.known_owner() == "owner-1" and account.scope() == "ReadX"
        assert account.snapshot()["in_flight"] == 0

    run(scenario)


def test_a_hanging_store_is_named_when_the_wait_runs_out() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        rig.store.hold = asyncio.Event()
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(10.1)
        with pytest.raises(TokenUnavailable) as info:
            await waiter
        assert info.value.reason is Reason.STORE_NOT_ANSWERING
        assert info.value.retry_after == 1.0
        assert rig.platform.calls == []
        rig.store.hold.set()
        await rig.clock.advance(0)
        assert account.try_lease() == ("a1", 1)  # the renewal went on once the store answered

    run(scenario)
