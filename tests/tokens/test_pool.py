"""TokenPool: built from the config with the ports it is given; accounts of one client id share
the call budget; store notifications reach the accounts."""

from __future__ import annotations

import asyncio

import pytest

from proxy_addon.config import parse_config
from proxy_addon.tokens.failures import Reason, TokenUnavailable
from proxy_addon.tokens.pool import TokenPool
from proxy_addon.tokens.settings import PoolSettings

from .fakes import FakeClock, FakePlatform, FakeStore, RecordingObserver


def _config():  # type: ignore[no-untyped-def]
    accounts = [{"name": name, "client_id": client, "client_secret": "s", "grant": "jwt",
                 "jwt": "j"} for name, client in (("a", "app"), ("b", "app"), ("c", "other"))]
    return parse_config({"proxy": {"upstream": "http://127.0.0.1:9"}, "accounts": accounts},
                        "test", {})


def test_pool_shares_budgets_per_client_and_relays_notifications() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        platform, store, observer = FakePlatform(clock), FakeStore(), RecordingObserver()
        pool = TokenPool.build(_config(), platform, store, observer=observer, clock=clock,
                               settings=PoolSettings(auth_budget_calls=1), owner="me")
        assert sorted(pool.accounts) == ["a", "b", "c"] and pool["a"].account.name == "a"
        await pool.start()
        await pool["a"].lease()
        with pytest.raises(TokenUnavailable) as info:  # same client id: budget spent
            await pool["b"].lease()
        assert info.value.reason is Reason.BUDGET_EXHAUSTED
        await pool["c"].lease()  # another app: its own budget
        await store.compare_and_set("b", 0, platform.issue())  # another process logs b in
        pool._stored("b", 1)
        await store.compare_and_set("a", 1, platform.issue())  # ... and renews a
        pool._stored("", 0)  # "re-read everything"
        await clock.advance(0)
        assert pool["b"].try_lease() == ("a3", 1)
        assert pool["a"].try_lease() == ("a4", 2)
        assert len(platform.calls) == 2  # a's and c's logins only
        pool.close()
        await asyncio.sleep(0)  # the cancelled heartbeat task unwinds
        assert clock.pending() == []  # no timer left armed

    asyncio.run(scenario())


def _pool_of(count: int, clock: FakeClock, platform: FakePlatform, store: FakeStore,
             **settings: float) -> TokenPool:
    accounts = [{"name": f"acct-{i}", "client_id": f"app-{i}", "client_secret": "s",
                 "grant": "jwt", "jwt": "j"} for i in range(count)]
    config = parse_config({"proxy": {"upstream": "http://127.0.0.1:9"}, "accounts": accounts},
                          "test", {})
    return TokenPool.build(config, platform, store, observer=RecordingObserver(), clock=clock,
                           settings=PoolSettings(auth_budget_calls=0, **settings), owner="me")


def test_rotation_near_is_the_any_of_the_accounts_at_every_step() -> None:
    """The pool's cached answer (issue 16) equals asking every account, through logins,
    refresh-ahead windows, renewals, a rejection and an announced rotation."""
    async def scenario() -> None:
        clock = FakeClock()
        platform, store = FakePlatform(clock, access_ttl=600.0), FakeStore()
        pool = _pool_of(4, clock, platform, store)
        await pool.start()

        seen: set[bool] = set()

        def check() -> None:
            expected = any(a.rotation_near() for a in pool.accounts.values())
            assert pool._rotation_near() == expected
            seen.add(expected)

        check()
        for i, account in enumerate(pool.accounts.values()):
            _, generation = await account.lease()
            account.release(generation)
            check()
            await clock.advance(37.0 * (i + 1))
            check()
        for _ in range(120):  # 20 min in 10 s steps: every window opens and closes
            await clock.advance(10.0)
            check()
            for account in list(pool.accounts.values())[:2]:  # two accounts stay in use
                lease = account.try_lease()
                if lease is not None:
                    account.release(lease[1])
            check()
        first = pool["acct-0"]
        lease = await first.lease()
        first.release(lease[1])
        first.note_rejected(first.generation, "OAU-213")
        check()
        await clock.advance(0)
        check()
        pool._announced("acct-1", pool["acct-1"].generation, "another-process")
        check()
        await clock.advance(5.0)
        check()
        assert seen == {True, False}
        pool.close()
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_rotation_near_does_not_scan_an_idle_pool_on_every_poll(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: the SQLite watcher asks before every poll (1 to 20 a second). An idle pool of
    2,000 accounts is scanned once, not once per poll (it was: 8 ms a poll at 10,000)."""
    from proxy_addon.tokens.account import AccountTokens

    async def scenario() -> None:
        clock = FakeClock()
        platform, store = FakePlatform(clock), FakeStore()
        pool = _pool_of(2000, clock, platform, store)
        await pool.start()
        for account in pool.accounts.values():
            _, generation = await account.lease()
            account.release(generation)
        asked = 0
        window = AccountTokens.rotation_window

        def counting(self: AccountTokens) -> tuple[float, float]:
            nonlocal asked
            asked += 1
            return window(self)

        monkeypatch.setattr(AccountTokens, "rotation_window", counting)
        for _ in range(600):  # ten minutes of 1 s polls, no account near
            assert pool._rotation_near() is False
            await clock.advance(1.0)
        assert asked <= 2000
        pool.close()
        await asyncio.sleep(0)

    asyncio.run(scenario())
