"""The operation -> group table (bundled spec table, learned answers, method fallback) and the
defensive reading of X-Rate-Limit-* / Retry-After headers (issue 17)."""

from __future__ import annotations

import pytest

from proxy_addon.ratelimit.groups import MAX_LEARNED, GroupTable, fold, group_key
from proxy_addon.ratelimit.headers import rate_headers, retry_after


@pytest.fixture(scope="module")
def table() -> GroupTable:
    return GroupTable.bundled()


def test_bundled_table_seeds_the_published_groups(table: GroupTable) -> None:
    assert table.group("GET", "/restapi/v1.0/account/~/call-log")[1] == "heavy"
    assert table.group("GET", "/restapi/v1.0/account/~/extension/~")[1] == "light"
    assert table.group("PUT", "/restapi/v1.0/account/~/extension/~")[1] == "medium"
    # ids folded into the template: one operation whatever the ids
    one = table.group("GET", "/restapi/v1.0/account/~/extension/~/message-store/123?x=1")
    two = table.group("GET", "/restapi/v1.0/account/1/extension/2/message-store/456")
    assert one == two == ("GET /restapi/v1.0/account/{accountId}/extension/{extensionId}"
                          "/message-store/{messageId}", "light")
    assert table.group("HEAD", "/restapi/v1.0/account/~/extension/~")[1] == "light"
    assert table.group("GET", "/restapi/v1.0")[1] == "nothrottling"
    assert table.group("POST", "/restapi/oauth/wstoken")[1] == "auth"


def test_unknown_operations_fall_back_to_the_method(table: GroupTable) -> None:
    assert table.group("GET", "/restapi/v2/brand-new/thing/77")[1] == "light"
    assert table.group("POST", "/restapi/v2/brand-new/thing")[1] == "medium"
    assert fold("/restapi/v2/brand-new/thing/77/~/abcdef123456789") == \
        "/restapi/v2/brand-new/thing/{}/{}/{}"


def test_the_platforms_answer_wins_over_the_table() -> None:
    table = GroupTable.bundled()
    operation, group = table.group("GET", "/restapi/v1.0/account/~/extension/~")
    assert group == "light"
    table.learn("GET", operation, "heavy")
    assert table.group("GET", "/restapi/v1.0/account/9/extension/8") == (operation, "heavy")
    assert table.group("PUT", "/restapi/v1.0/account/9/extension/8")[1] == "medium"


def test_learned_operations_are_bounded() -> None:
    table = GroupTable([])
    for n in range(MAX_LEARNED + 50):
        table.learn("GET", f"GET /random/{n}x", "heavy")
    assert table.learned == MAX_LEARNED
    assert table.group("GET", "/random/zzz")[1] == "light"


def test_group_names_compare_case_insensitively_and_garbage_is_refused() -> None:
    assert group_key("Light") == group_key("light") == group_key(" LIGHT ") == "light"
    for bad in ("", "1abc", "a" * 40, "light;drop", "light group", "\u0131ight"):
        assert group_key(bad) is None, bad


@pytest.mark.parametrize(("headers", "expected"), [
    ({"X-Rate-Limit-Group": "Heavy", "X-Rate-Limit-Limit": "10", "X-Rate-Limit-Remaining": "3",
      "X-Rate-Limit-Window": "60"}, ("heavy", 10, 3, 60.0)),
    ({"x-rate-limit-group": "light", "x-rate-limit-window": "2.5"}, ("light", None, None, 2.5)),
    ({"X-Rate-Limit-Limit": "-5", "X-Rate-Limit-Remaining": "-1",
      "X-Rate-Limit-Window": "-60"}, (None, None, None, None)),
    ({"X-Rate-Limit-Limit": "1e9", "X-Rate-Limit-Remaining": "NaN",
      "X-Rate-Limit-Window": "inf"}, (None, None, None, None)),
    ({"X-Rate-Limit-Limit": "99999999999999", "X-Rate-Limit-Window": "99999999"},
     (None, None, None, None)),
    ({"X-Rate-Limit-Limit": "0", "X-Rate-Limit-Window": "0"}, (None, None, None, None)),
    ({"X-Rate-Limit-Limit": "5", "X-Rate-Limit-Remaining": "50"}, (None, 5, 5, None)),
    ({"X-Rate-Limit-Limit": "\u0665"}, (None, None, None, None)),  # a non-ASCII digit
])
def test_rate_headers_believe_only_sane_values(headers: dict[str, str],
                                               expected: tuple[object, ...]) -> None:
    from mitmproxy.http import Headers

    rate = rate_headers(Headers(**{k.replace("-", "_"): v for k, v in headers.items()}))
    assert (rate.group, rate.limit, rate.remaining, rate.window) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("60", 60.0), ("2.5", 2.5), (None, 30.0), ("-1", 30.0), ("abc", 30.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0), ("99999999", 600.0), ("nan", 30.0),
])
def test_retry_after_is_read_defensively_and_capped(value: str | None, expected: float) -> None:
    headers = {} if value is None else {"retry-after": value}
    assert retry_after(headers, default=30.0, cap=600.0) == expected


def test_random_group_names_from_answers_are_bounded() -> None:
    from proxy_addon.config import RateLimitConfig
    from proxy_addon.ratelimit.governor import MAX_GROUPS, Governor

    governor = Governor(RateLimitConfig(), GroupTable.bundled())
    for n in range(MAX_GROUPS * 3):
        governor.learn("main", "GET", "GET /x", "light", {"x-rate-limit-group": f"g{n}",
                                                          "x-rate-limit-limit": "5"})
    assert len({view.group for view in governor.views()}) <= MAX_GROUPS + 1
    assert governor.bad_headers > 0


def test_remaining_zero_on_a_429_is_a_penalty_not_usage() -> None:
    """Regression (found by the Prometheus bad-day test): a 429 says X-Rate-Limit-Remaining: 0
    because of the penalty; read as usage it filled the window with 100,000 calls nobody made
    and held the group for a whole window after the penalty ended."""
    from proxy_addon.config import RateLimitConfig
    from proxy_addon.ratelimit.governor import Governor

    governor = Governor(RateLimitConfig(), GroupTable.bundled())
    headers = {"x-rate-limit-group": "Light", "x-rate-limit-limit": "1000",
               "x-rate-limit-remaining": "0", "x-rate-limit-window": "60"}
    governor.learn("main", "GET", "GET /x", "light", headers, status=429)
    assert governor.gate("main", "light").used() == 0
    governor.learn("main", "GET", "GET /x", "light", headers, status=200)
    assert governor.gate("main", "light").used() == 1000  # a 200 saying so is usage
