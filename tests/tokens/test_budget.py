"""The auth budget: a sliding window of token-endpoint calls per (user, client id), on a fake
clock."""

from __future__ import annotations

import pytest

from proxy_addon.config import AccountConfig, Secret
from proxy_addon.tokens.budget import AuthBudget, AuthBudgets, budget_key

from .fakes import FakeClock


def test_calls_beyond_the_budget_wait_for_the_oldest_to_leave_the_window() -> None:
    clock = FakeClock()
    budget = AuthBudget(2, 60.0, clock.monotonic)
    assert budget.reserve() == 0.0
    clock.now += 10
    assert budget.reserve() == 0.0
    clock.now += 20
    assert budget.reserve() == pytest.approx(30.0)  # the first call leaves at +60
    assert budget.reserve() == pytest.approx(30.0)  # a refusal takes no slot
    clock.now += 30
    assert budget.reserve() == 0.0
    assert budget.reserve() == pytest.approx(10.0)  # now the second call is the oldest


def test_zero_calls_means_unlimited() -> None:
    budget = AuthBudget(0, 60.0, FakeClock().monotonic)
    assert all(budget.reserve() == 0.0 for _ in range(100))


def _jwt(subject: str) -> str:
    import base64
    import json

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': subject})}.signature"


def _account(name: str, client_id: str, grant: str = "jwt", **values: object) -> AccountConfig:
    return AccountConfig(name=name, client_id=client_id, client_secret=None, grant=grant,
                         **values)  # type: ignore[arg-type]


def test_budgets_are_per_user_and_client_id() -> None:
    """Issue 17: the platform counts token calls per (user, app). Accounts of different users
    under one client id each have a budget (it was one per client id: 300 customers shared 5
    calls a minute); accounts of one user and one client id share one."""
    clock = FakeClock()
    budgets = AuthBudgets(1, 60.0, clock.monotonic)
    alice = _account("alice", "app", jwt=Secret(_jwt("1001")))
    bob = _account("bob", "app", jwt=Secret(_jwt("1002")))
    alice_again = _account("alice-2", "app", jwt=Secret(_jwt("1001") + "x"))  # same subject
    other_app = _account("alice-other-app", "other-app", jwt=Secret(_jwt("1001")))
    assert budgets.for_account(alice).reserve() == 0.0
    assert budgets.for_account(bob).reserve() == 0.0  # another user: its own budget
    assert budgets.for_account(other_app).reserve() == 0.0  # another app: its own budget
    assert budgets.for_account(alice_again).reserve() > 0  # same (user, app): shared
    assert budgets.for_account(alice) is budgets.for_account(alice_again)


def test_budget_key_tells_users_apart_as_far_as_the_config_can() -> None:
    assert budget_key(_account("a", "app", grant="password", username="+15550001",
                               extension="101", password=Secret("p"))) == (
        "app", "user:+15550001:101")
    opaque = budget_key(_account("b", "app", jwt=Secret("not-a-jwt")))
    assert opaque[1].startswith("jwt:") and "not-a-jwt" not in opaque[1]  # no secret in keys
    assert budget_key(_account("c", "app", jwt=Secret("a.!!!.c")))[1].startswith("jwt:")
    assert budget_key(_account("d", "app", grant="refresh_token",
                               refresh_token=Secret("r"))) == ("app", "account:d")


def test_the_token_endpoints_headers_set_the_budget_within_the_configured_cap() -> None:
    clock = FakeClock()
    budget = AuthBudget(5, 60.0, clock.monotonic)
    budget.learn(3, 120.0)  # the platform says 3 per 120 s for this app
    assert (budget.calls, budget.window) == (3, 120.0 * 1.02 + 0.5)
    budget.learn(50, 10.0)  # never above the configured 5 nor below its window
    assert (budget.calls, budget.window) == (5, 60.0)
    off = AuthBudget(0, 60.0, clock.monotonic)
    off.learn(5, 60.0)
    assert off.calls == 0  # a budget switched off stays off


def test_processes_sharing_a_store_share_the_token_call_budget(tmp_path) -> None:
    """Issue 17: the Auth budget shared across processes: two budgets (as two workers would
    hold) on one SQLite file make 2 calls together, not 2 each."""
    import asyncio
    import time

    from proxy_addon.store.base import RecordCodec
    from proxy_addon.store.crypto import TokenCipher
    from proxy_addon.store.sqlite import SQLiteStore

    async def scenario() -> list[float]:
        store = SQLiteStore(RecordCodec(TokenCipher(None)), tmp_path / "t.db")
        await store.open()
        try:
            first = AuthBudget(2, 60.0, time.monotonic, store, "auth/x")
            second = AuthBudget(2, 60.0, time.monotonic, store, "auth/x")
            return [await first.take(), await second.take(), await second.take(),
                    await first.take()]
        finally:
            await store.close()

    waits = asyncio.run(scenario())
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 50 and waits[3] > 50  # each has local room; the shared window has none
