"""Every state transition of :class:`AccountTokens`, one test each, on a fake clock and fake
ports.

States (``AccountState``): idle, refreshing, healthy, backing_off, misconfigured,
reauth_required. The transitions that exist (``_set_state`` is the only writer):

====================================  ===============================================  ======
from -> to                            cause                                            test
====================================  ===============================================  ======
idle -> refreshing                    first lease: lock taken, platform called         T1
refreshing -> healthy                 the new pair is obtained and stored              T1
idle -> healthy                       start() adopts the stored session                T2
idle -> healthy                       the lock holder stores a pair: adopted, no call  T3
healthy -> refreshing                 refresh-ahead timer (token was used)             T4
refreshing -> backing_off             token endpoint 5xx / unreachable / budget        T5
backing_off -> refreshing             next lease after the back-off                    T5
refreshing -> misconfigured           credentials refused (invalid_client)             T6
misconfigured -> refreshing           retry after misconfigured_backoff                T6
refreshing -> reauth_required         refresh token dead, grant cannot log in          T7
reauth_required -> healthy            the store poll finds an authorized session       T7
reauth_required -> healthy            authorized() (a login through the proxy)         T8
healthy -> backing_off                store down before the platform is called         T9
idle -> backing_off                   another process holds the lock and never ends    T10
backing_off -> healthy                notice(): another process stored a pair          T11
refreshing -> (previous)              close() cancels the renewal                      T12
====================================  ===============================================  ======
"""

from __future__ import annotations

import asyncio

import pytest

from proxy_addon.tokens.failures import Reason, TokenUnavailable
from proxy_addon.tokens.states import AccountState

from .fakes import Refused, Rig, run, transitions, unreachable


def test_t1_idle_refreshing_healthy_on_first_lease() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        rig.platform.gate = asyncio.Event()
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(0)
        assert account.state is AccountState.REFRESHING
        rig.platform.gate.set()
        token, generation = await waiter
        assert (token, generation) == ("a1", 1)
        assert seen == [("idle", "refreshing"), ("refreshing", "healthy")]
        assert rig.observer.renewals == ["logged_in"]
        assert "a1" in rig.observer.seen_secrets and "r1" in rig.observer.seen_secrets

    run(scenario)


def test_t2_idle_healthy_when_start_adopts_the_stored_session() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.store.compare_and_set("main", 0, rig.platform.issue())
        rig.platform.calls.clear()
        account = rig.account()
        seen = transitions(account)
        await account.start()
        assert seen == [("idle", "healthy")]
        assert account.try_lease() == ("a1", 1)
        assert rig.platform.calls == []

    run(scenario)


def test_t3_idle_healthy_adopting_the_lock_holders_pair() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        assert await rig.store.acquire_lock("main", "other-process", 6.0)
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(0.5)  # we poll the lock
        assert not waiter.done() and account.state is AccountState.IDLE
        await rig.store.compare_and_set("main", 0, rig.platform.issue())  # theirs
        await rig.clock.advance(0.1)
        assert await waiter == ("a1", 1)
        assert seen == [("idle", "healthy")]
        assert rig.platform.count("login") == rig.platform.count("refresh") == 0
        assert rig.observer.renewals == ["adopted"]

    run(scenario)


def test_t4_healthy_refreshing_healthy_on_refresh_ahead() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()
        account.release(generation)
        seen = transitions(account)
        rig.platform.gate = asyncio.Event()
        await rig.clock.advance(3600 - 59)  # inside the refresh-ahead window (60..72 s)
        assert account.state is AccountState.REFRESHING
        rig.platform.gate.set()
        await rig.clock.advance(0)
        assert seen == [("healthy", "refreshing"), ("refreshing", "healthy")]
        assert rig.platform.calls[-1] == ("refresh", "r1")
        assert account.try_lease() == ("a2", 2)

    run(scenario)


def test_t5_refreshing_backing_off_and_back() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        rig.platform.script = [unreachable()]
        with pytest.raises(TokenUnavailable) as info:
            await account.lease()
        assert info.value.reason is Reason.UPSTREAM_UNREACHABLE
        assert account.state is AccountState.BACKING_OFF
        await rig.clock.advance(1.0)  # the first back-off is 0.75..1 s
        assert await account.lease() == ("a1", 1)
        assert seen == [("idle", "refreshing"), ("refreshing", "backing_off"),
                        ("backing_off", "refreshing"), ("refreshing", "healthy")]

    run(scenario)


def test_t6_refreshing_misconfigured_and_retry_after_the_misconfigured_backoff() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        rig.platform.script = [Refused(400, "invalid_client", "OAU-153", why="check the id")]
        with pytest.raises(TokenUnavailable) as info:
            await account.lease()
        assert info.value.reason is Reason.MISCONFIGURED
        assert (info.value.detail, info.value.hint) == ("OAU-153", "check the id")
        assert info.value.retry_after == pytest.approx(30.0)
        await rig.clock.advance(10.0)
        with pytest.raises(TokenUnavailable):  # back-off ends after this wait: no call
            await account.lease()
        assert rig.platform.count("login") == 1
        await rig.clock.advance(20.0)
        assert await account.lease() == ("a1", 1)
        assert seen == [("idle", "refreshing"), ("refreshing", "misconfigured"),
                        ("misconfigured", "refreshing"), ("refreshing", "healthy")]

    run(scenario)


def test_t7_refreshing_reauth_required_then_healthy_from_the_store() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account("refresh_token")
        seen = transitions(account)
        rig.platform.script = [Refused(400, "invalid_grant", "OAU-211", dead=True)]
        with pytest.raises(TokenUnavailable) as info:
            await account.lease()
        assert info.value.reason is Reason.REAUTH_REQUIRED
        assert "tokenproxy authorize main" in info.value.hint
        assert info.value.retry_after is None
        assert account.needs_session() and rig.observer.lost == ["refresh_token_dead"]
        await rig.clock.advance(5.0)  # polling the store; nobody calls the platform
        assert rig.platform.calls == [("refresh", "config-refresh-token")]
        await rig.store.compare_and_set("main", 0, rig.platform.issue())  # tokenproxy authorize
        await rig.clock.advance(1.0)
        assert seen == [("idle", "refreshing"), ("refreshing", "reauth_required"),
                        ("reauth_required", "healthy")]
        assert account.try_lease() == ("a1", 1)

    run(scenario)


def test_t8_reauth_required_healthy_when_authorized() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account("refresh_token")
        rig.platform.script = [Refused(400, "invalid_grant", dead=True)]
        with pytest.raises(TokenUnavailable):
            await account.lease()
        seen = transitions(account)
        assert await account.authorized(rig.platform.issue())
        assert seen == [("reauth_required", "healthy")]
        assert account.try_lease() == ("a1", 1)
        assert (await rig.store.load("main")).tokens.access_token == "a1"  # type: ignore

    run(scenario)


def test_t9_healthy_backing_off_when_the_store_is_down() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        _, generation = await account.lease()
        seen = transitions(account)
        rig.store.down = True
        with pytest.raises(TokenUnavailable) as info:
            await account.rejected(generation, "OAU-210")
        assert info.value.reason is Reason.STORE_UNREACHABLE
        assert info.value.retry_after == 1.0
        assert seen == [("healthy", "backing_off")]
        assert rig.platform.count("refresh") == 0  # never renew what cannot be saved

    run(scenario)


def test_t10_idle_backing_off_when_another_process_keeps_the_lock() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        assert await rig.store.acquire_lock("main", "other-process", 60.0)
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(9.9)
        assert not waiter.done()
        await rig.clock.advance(0.2)  # the request's wait (token_wait_timeout) ends first
        with pytest.raises(TokenUnavailable) as info:
            await waiter
        assert info.value.reason is Reason.LOCK_HELD  # named as a wait for the holder
        assert seen == []  # the renewal still waits: the holder's token call may take long
        # lock_lease 6 s + the holder's token call (token_call_timeout 60 s) + 1 s: give up
        await rig.clock.advance(66.8)
        assert seen == [("idle", "backing_off")]
        assert rig.platform.calls == []

    run(scenario)


def test_t11_backing_off_healthy_on_notice_of_another_process_pair() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        rig.platform.script = [Refused(503, "", "")]
        with pytest.raises(TokenUnavailable) as info:
            await account.lease()
        assert info.value.reason is Reason.ENDPOINT_FAILED
        seen = transitions(account)
        await rig.store.compare_and_set("main", 0, rig.platform.issue())
        account.notice(1)
        await rig.clock.advance(0)
        assert seen == [("backing_off", "healthy")]
        assert account.try_lease() == ("a1", 1)  # their pair, generation 1

    run(scenario)


def test_t12_close_during_a_renewal_restores_the_previous_state() -> None:
    async def scenario(rig: Rig) -> None:
        account = rig.account()
        seen = transitions(account)
        rig.platform.gate = asyncio.Event()
        waiter = asyncio.ensure_future(account.lease())
        await rig.clock.advance(0)
        account.close()
        await rig.clock.advance(0)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert seen == [("idle", "refreshing"), ("refreshing", "idle")]
        assert await rig.store.acquire_lock("main", "x", 1.0)  # our renewal lock was released

    run(scenario)
