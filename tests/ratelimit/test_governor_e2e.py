"""Issue 17 acceptance, through real processes: a real ``tokenproxy run`` (enforce mode) in front
of the emulator enforcing the platform's API limits per (user, app, group) with a penalty that
every request restarts (``--api-rate enforce``), windows shortened to 4 s, penalties to 2 s.

- 20 apps on one account offer 3x the Light, Medium and Heavy limits (the platform's
  defaults) for 10 windows: the
  platform answers 0 429s; each group's budget is used >= 90 %; each app's share of what was
  served is within +-10 % of its weight; every refused request gets the proxy's 429 (its
  envelope, a Retry-After) within its deadline.
- A platform penalty injected by the emulator's fault route (429 with Retry-After): no request
  of that group reaches the platform before it ends; the requests caught in it are served after
  it or answered 429 by the proxy.
- Hostile rate-limit headers never hold traffic beyond the documented cap.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy_addon.cli.status import render
from tests.support.proxy import client, jwt_account, start_proxy
from tests.support.scripted_upstream import Answer, ScriptedUpstream, Seen

from .load import APPS, EXT, LIMITS, WINDOW, app_key, emulator_args, offer, warm_up

WINDOWS = 10
MAX_WAIT = 3.0
PLATFORM_LIMITS = {"Light": 50, "Medium": 40, "Heavy": 10}  # the docs' defaults
# the 20-app test's window: the proxy widens windows by twice the requests' recent latency,
# which on a loaded 2-core CI reaches 0.2-0.3 s: 6-7 % of a 4 s window, 3 % of 8 s
LONG_WINDOW = 8.0


def _emulator(emulator_factory, penalty: float = 2.0):
    return emulator_factory(*emulator_args(penalty))


def test_twenty_apps_share_one_accounts_budget_fairly_without_a_platform_429(
        tmp_path: Path, emulator_factory) -> None:
    """At the platform's default limits (Light 50, Medium 40, Heavy 10 per window), the apps'
    default weight (1): ~50 requests served per app, enough for +-10 % to be more than one
    request of each group. Unequal weights are shared exactly by the fair queue itself
    (tests/ratelimit/test_gate.py: 2:1 weights get 8 and 4 of 12 slots)."""
    emulator = emulator_factory(*emulator_args(limits=PLATFORM_LIMITS, window=LONG_WINDOW))
    weights = [1.0] * APPS
    proxy = start_proxy(
        tmp_path, emulator.url, accounts=[jwt_account()],
        clients=[client(f"app{n:02d}", key=app_key(n)) for n in range(APPS)],
        rate_limits={"mode": "enforce", "max_wait": MAX_WAIT})
    try:
        warm_up(proxy.url, LONG_WINDOW)
        emulator.reset_counters()
        outcome = offer([proxy.url], LONG_WINDOW * WINDOWS, window=LONG_WINDOW,
                        limits=PLATFORM_LIMITS)
        counters = emulator.counters()
    finally:
        proxy.stop()
    assert not outcome.unexpected, outcome.unexpected[:5]
    assert sum(counters["api_429_by_group"].values()) == 0, counters["api_429_by_group"]
    for group, limit in PLATFORM_LIMITS.items():
        capacity = limit * (outcome.elapsed / LONG_WINDOW)  # the group's budget over the run
        served = outcome.served_group[group]
        assert served >= 0.9 * capacity, (group, served, capacity)
        assert counters["api_served_by_group"].get(group, 0) == served
    assert outcome.refusal_times and max(outcome.refusal_times) <= MAX_WAIT + 1.0
    total = sum(outcome.served_app.values())
    shares = {n: outcome.served_app[f"app{n:02d}"] for n in range(APPS)}
    print(f"figures fairness: {total} served, shares {shares}")
    for n in range(APPS):
        expected = total * weights[n] / sum(weights)
        assert abs(shares[n] - expected) <= 0.1 * expected, (n, shares[n], expected)


def test_a_platform_penalty_holds_its_group_and_the_caught_requests_go_after_it(
        tmp_path: Path, emulator_factory) -> None:
    emulator = _emulator(emulator_factory)
    proxy = start_proxy(tmp_path, emulator.url, rate_limits={"mode": "enforce",
                                                             "max_wait": 6.0})
    try:
        with proxy.http() as http:
            assert http.get(EXT).status_code == 200
            emulator.rate_penalty("Light", retry_after=3, seconds=3)
            emulator.reset_counters()
            penalty_from = time.monotonic()
            first = http.get(EXT)  # the platform's 429: penalty learned, request held, resent
            assert first.status_code == 200, first.text
            assert time.monotonic() - penalty_from >= 3.0 - 0.2
            counters = emulator.counters()
            # one 429 (the request that met the penalty), then the resend after it: no
            # request restarted the penalty
            assert counters["api_429_by_group"] == {"Light": 1}, counters
            # other groups were never held
            assert http.get(EXT + "/call-log").status_code != 429
    finally:
        proxy.stop()
    assert "the platform answered 429 for group light" in proxy.logs()


def test_a_penalty_longer_than_the_deadline_gets_the_proxys_429(tmp_path: Path,
                                                                 emulator_factory) -> None:
    emulator = _emulator(emulator_factory)
    proxy = start_proxy(tmp_path, emulator.url, rate_limits={"mode": "enforce",
                                                             "max_wait": 1.0})
    try:
        with proxy.http() as http:
            assert http.get(EXT).status_code == 200
            emulator.rate_penalty("Light", retry_after=30, seconds=30)
            emulator.reset_counters()
            answers = [http.get(EXT) for _ in range(5)]
        counters = emulator.counters()
        status = proxy.status()
    finally:
        proxy.stop()
    # /status (and `tokenproxy status`) show the account's groups, the penalty running
    (light,) = [g for a in status["accounts"] for g in a["rate_limits"] if g["group"] == "light"]
    assert light["penalty_left"] > 15 and light["limit"] == LIMITS["Light"], light
    table = render(status)
    assert "PENALTY" in table and "light" in table
    assert [a.status_code for a in answers] == [429] * 5
    assert all(a.headers["x-tokenproxy-error"] == "TPX-RATE-LIMITED" for a in answers)
    assert all(20 <= int(a.headers["retry-after"]) <= 31 for a in answers)
    # only the first reached the platform; the other four never restarted its penalty
    assert counters["api_429_by_group"] == {"Light": 1}, counters


HOSTILE = {
    "huge": [("Retry-After", "999999999"), ("X-Rate-Limit-Window", "99999999")],
    "negative": [("Retry-After", "-5"), ("X-Rate-Limit-Limit", "-1"),
                 ("X-Rate-Limit-Remaining", "-3")],
    "non-numeric": [("Retry-After", "soon"), ("X-Rate-Limit-Limit", "lots"),
                    ("X-Rate-Limit-Window", "NaN"), ("X-Rate-Limit-Group", "li ght;")],
    "missing": [],
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_rate_limit_headers_never_hold_a_group_beyond_the_cap(
        tmp_path: Path, kind: str) -> None:
    """A platform (or something on the way) answers one 429 with absurd, negative,
    non-numeric or no rate-limit headers: the group waits at most [rate_limits] max_penalty
    (huge values, capped) or default_retry_after (garbage or missing: not believed), then
    serves again; nothing crashes and the answers stay well-formed."""
    sent: list[float] = []
    refused_once = threading.Event()

    def script(seen: Seen) -> Answer:
        sent.append(time.monotonic())
        if not refused_once.is_set():
            refused_once.set()
            return Answer(429, [("Content-Type", "application/json"), *HOSTILE[kind]],
                          b'{"errorCode": "CMN-301", "message": "Request rate exceeded"}')
        return Answer(200, [("Content-Type", "application/json"),
                            ("X-Rate-Limit-Group", "Light"), ("X-Rate-Limit-Limit", "50"),
                            ("X-Rate-Limit-Remaining", "49"), ("X-Rate-Limit-Window", "60")])

    with ScriptedUpstream(script) as upstream:
        proxy = start_proxy(tmp_path, upstream.url, rate_limits={
            "mode": "enforce", "max_wait": 0.3, "max_penalty": 2.0, "default_retry_after": 1.0})
        try:
            with proxy.http() as http:
                first = http.get(EXT)  # the 429: penalty (capped), no resend within 0.3 s
                assert first.status_code == 429
                held = http.get(EXT)  # during the penalty: the proxy's own 429
                assert held.status_code == 429
                assert held.headers["x-tokenproxy-error"] == "TPX-RATE-LIMITED"
                assert 1 <= int(held.headers["retry-after"]) <= 2
                time.sleep(2.2)  # beyond the cap, whatever the header said
                assert http.get(EXT).status_code == 200
        finally:
            proxy.stop()
        assert len(upstream.api()) == 2  # the 429 and the last request: none during the hold
    assert "Traceback" not in proxy.logs()


@pytest.mark.parametrize("variant", ["lower-case group names", "no rate-limit headers"])
def test_platform_variants_are_governed_too(tmp_path: Path, emulator_factory,
                                            variant: str) -> None:
    """The docs' example writes `X-Rate-Limit-Group: light`, the spec `Light`; answers under
    account-level limits carry no X-Rate-Limit-* headers at all. A burst of 3x the Light limit
    at once: the platform sees exactly the limit (headers) or the configured default (none),
    never a 429."""
    extra = (("--api-group-case", "lower") if variant.startswith("lower")
             else ("--api-rate-headers", "false"))
    emulator = emulator_factory(*emulator_args(), *extra)
    limits = {"Light": LIMITS["Light"], "Medium": LIMITS["Medium"], "Heavy": LIMITS["Heavy"]}
    proxy = start_proxy(tmp_path, emulator.url, clients=[client("app0", key=app_key(0))],
                        rate_limits={"mode": "enforce", "max_wait": 3.0, "window": WINDOW,
                                     "limits": limits})
    try:
        warm_up(proxy.url)
        emulator.reset_counters()

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=30, headers={
                    "Authorization": f"Bearer {app_key(0)}"}) as http:
                answers = await asyncio.gather(*(http.get(EXT)
                                                 for _ in range(3 * LIMITS["Light"])))
            return [a.status_code for a in answers]

        statuses = asyncio.run(burst())
        counters = emulator.counters()
    finally:
        proxy.stop()
    assert statuses.count(200) == LIMITS["Light"], statuses
    assert statuses.count(429) == 2 * LIMITS["Light"]
    assert sum(counters["api_429_by_group"].values()) == 0, counters["api_429_by_group"]
