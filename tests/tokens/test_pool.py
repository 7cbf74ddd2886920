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
