"""The auth budget: a sliding window of token-endpoint calls per client id, on a fake clock."""

from __future__ import annotations

import pytest

from proxy_addon.tokens.budget import AuthBudget, AuthBudgets

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


def test_accounts_of_one_client_id_share_a_budget() -> None:
    clock = FakeClock()
    budgets = AuthBudgets(1, 60.0, clock.monotonic)
    assert budgets.for_client("app") is budgets.for_client("app")
    assert budgets.for_client("app").reserve() == 0.0
    assert budgets.for_client("app").reserve() > 0
    assert budgets.for_client("other-app").reserve() == 0.0
