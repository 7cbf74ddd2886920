"""API and token-endpoint rate limits of the emulator: the group table, enforcement per
(user, app, group), the penalty that every request restarts, the header variants, the injected
penalties (``/_emulator/rate-penalty``) and the policy's validation.

HTTP tests run a real emulator subprocess; timing assertions are derived from the client's own
send/receive instants (a request's server time lies between them), so a slow machine can make
an outcome undetermined but never wrong. Fake-clock unit tests pin the exact arithmetic.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from rc_emulator.errors import PlatformError
from rc_emulator.policy import Policy, PolicyError, parse_limits
from rc_emulator.ratelimit import (
    RateTable,
    format_retry_after,
    format_window,
    rate_table,
    request_group,
)
from rc_emulator.seed import JWT_GRANT_URN
from rc_emulator.state import Platform, Session

from tests.emulator.emu_client import (
    EXT,
    JWT_GRANT,
    NOJWT,
    RATE_HEADERS,
    bearer,
    client,
    jwt_login,
    refresh,
    token,
)
from tests.support.emulator import Emulator

Make = Callable[..., Emulator]
USER2_JWT = "demo-jwt-credential-2"
CALL_LOG = EXT + "/call-log"  # Heavy in the table (the heuristic would say Light)
ECHO = "/restapi/v1.0/echo"  # not in the table: heuristic (GET Light, POST Medium)
RATE_EXCEEDED = {
    "errorCode": "CMN-301",
    "message": "Request rate exceeded",
    "errors": [{"errorCode": "CMN-301", "message": "Request rate exceeded"}],
}


def rate(response: httpx.Response) -> tuple[str, str, str, str] | None:
    """(group, limit, remaining, window) from the X-Rate-Limit-* headers, None if absent."""
    values = [response.headers.get(name) for name in RATE_HEADERS]
    if all(v is None for v in values):
        return None
    assert all(v is not None for v in values), response.headers
    return tuple(values)  # type: ignore[return-value]


def timed(c: httpx.Client, path: str, headers: dict[str, str]) -> tuple[float, float, int]:
    """(send instant, receive instant, status) of one GET."""
    sent = time.monotonic()
    status = c.get(path, headers=headers).status_code
    return sent, time.monotonic(), status


def user_headers(c: httpx.Client, assertion: str = "demo-jwt-credential") -> dict[str, str]:
    return bearer(jwt_login(c, assertion)["access_token"])


def nojwt_user1_headers(c: httpx.Client) -> dict[str, str]:
    form = {"grant_type": "password", "username": "+15550100001", "password": "demo-password"}
    response = token(c, form, NOJWT)
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


# ------------------------------------------------------------------------ enforcement
def test_enforced_limit_429_headers_and_penalty_restarts(make_emulator: Make) -> None:
    penalty = 1.0
    emu = make_emulator("--api-rate", "enforce", "--api-limits", "Light=3", "--api-window",
                        "30", "--api-penalty", str(penalty), "--auth-rate", "0")
    with client(emu) as c:
        headers = user_headers(c)
        for remaining in ("2", "1", "0"):
            ok = c.get(EXT, headers=headers)
            assert ok.status_code == 200
            assert rate(ok) == ("Light", "3", remaining, "30")
        last_sent = time.monotonic()
        over = c.get(EXT, headers=headers)
        last_received = time.monotonic()
        assert over.status_code == 429
        assert over.json() == RATE_EXCEEDED
        assert over.headers["Retry-After"] == "1"
        assert rate(over) == ("Light", "3", "0", "30")
        # another group of the same pair is counted apart
        assert c.post(ECHO, headers=headers, content=b"x").status_code == 200
        # keep sending within the penalty: every request restarts it
        first_sent = time.monotonic()
        for _ in range(6):  # 6 x 0.25 s: longer than the penalty
            time.sleep(0.25)
            sent, received, status = timed(c, EXT, headers)
            if received - last_sent < penalty:  # surely within the (restarted) penalty
                assert status == 429
            if status == 429:
                last_sent, last_received = sent, received
            else:  # only possible after a stall longer than the penalty
                assert received - last_sent >= penalty
                pytest.skip("machine stalled longer than the penalty")
        assert last_received - first_sent > penalty  # refused past the first penalty's end
        # it ends only `penalty` after the last request
        time.sleep(max(0.0, last_received + 0.6 * penalty - time.monotonic()))
        sent, received, status = timed(c, EXT, headers)
        if received - last_sent < penalty:
            assert status == 429
            last_sent, last_received = sent, received
        time.sleep(max(0.0, last_received + penalty + 0.2 - time.monotonic()))
        after = c.get(EXT, headers=headers)
        assert after.status_code == 200
        assert rate(after) == ("Light", "3", "2", "30")  # the window starts afresh
    counters = emu.counters()
    served, refused = counters["api_served_by_group"], counters["api_429_by_group"]
    assert served["Light"] == 4 and served["Medium"] == 1
    assert refused["Light"] >= 2 and "Medium" not in refused
    assert counters["api_calls_by_group"]["Light"] == served["Light"] + refused["Light"]


def test_pairs_and_groups_are_counted_apart(make_emulator: Make) -> None:
    emu = make_emulator("--api-rate", "enforce", "--api-limits", "light=1,MEDIUM=1,Heavy=1",
                        "--auth-rate", "0")
    with client(emu) as c:
        user1, user2, other_app = user_headers(c), user_headers(c, USER2_JWT), \
            nojwt_user1_headers(c)
        assert c.get(EXT, headers=user1).status_code == 200
        limited = c.get(EXT, headers=user1)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"
        assert rate(limited) == ("Light", "1", "0", "60")
        assert c.get(EXT, headers=user2).status_code == 200  # another user, same app
        assert c.get(EXT, headers=other_app).status_code == 200  # same user, another app
        assert c.post(ECHO, headers=user1).status_code == 200  # Medium
        assert c.get(CALL_LOG, headers=user1).status_code == 200  # Heavy
        assert c.get(CALL_LOG, headers=user1).status_code == 429
        assert c.get(EXT, headers=user2).status_code == 429
    assert emu.counters()["api_429_by_group"] == {"Light": 2, "Heavy": 1}


def test_window_slides(make_emulator: Make) -> None:
    emu = make_emulator("--api-rate", "enforce", "--api-limits", "Light=2", "--api-window",
                        "0.5", "--api-penalty", "0", "--auth-rate", "0")
    with client(emu) as c:
        headers = user_headers(c)
        assert [c.get(EXT, headers=headers).status_code for _ in range(2)] == [200, 200]
        done = time.monotonic()
        time.sleep(0.7)
        assert time.monotonic() - done >= 0.5
        again = c.get(EXT, headers=headers)
        assert again.status_code == 200
        assert rate(again) == ("Light", "2", "1", "0.5")


def test_report_mode_never_refuses(make_emulator: Make) -> None:
    emu = make_emulator("--api-limits", "Light=2", "--api-penalty", "60", "--auth-rate", "0")
    with client(emu) as c:
        headers = user_headers(c)
        answers = [c.get(EXT, headers=headers) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6
    assert [rate(r)[2] for r in answers] == ["1", "0", "0", "0", "0", "0"]  # type: ignore[index]
    counters = emu.counters()
    assert counters["api_429_by_group"] == {}
    assert counters["api_served_by_group"] == counters["api_calls_by_group"] == {"Light": 6}


# ------------------------------------------------------------------------- the table
def test_group_table_lookup(emulator: Emulator) -> None:
    with client(emulator) as c:
        headers = user_headers(c)
        cases = [
            (c.get(EXT, headers=headers), "Light", "50"),
            (c.get(CALL_LOG, headers=headers), "Heavy", "10"),
            (c.get("/restapi/v1.0/account/~/recording/7", headers=headers), "Heavy", "10"),
            (c.post(EXT + "/sms", headers=headers, json={"text": "x"}), "Medium", "40"),
            (c.get("/media/restapi/v1.0/account/~/recording/7/content?size=1", headers=headers),
             "Heavy", "10"),
            # not in the table: the heuristic
            (c.get(ECHO, headers=headers), "Light", "50"),
            (c.put(ECHO, headers=headers), "Medium", "40"),
            (c.get("/restapi/v1.0/no/such/content", headers=headers), "Heavy", "10"),
        ]
        for response, group, limit in cases:
            assert rate(response)[:2] == (group, limit), response.request.url  # type: ignore
        before = emulator.counters()["api_calls_by_group"]
        no_throttling = c.get("/restapi/v1.0", headers=headers)  # GET /restapi/{apiVersion}
        assert no_throttling.status_code == 404
        assert rate(no_throttling) is None
        assert emulator.counters()["api_calls_by_group"] == before  # not counted
        unauthenticated = c.get(CALL_LOG)
        assert unauthenticated.status_code == 401
        assert rate(unauthenticated) == ("Heavy", "10", "9", "60")


def test_group_source_heuristic(make_emulator: Make) -> None:
    emu = make_emulator("--api-group-source", "heuristic", "--auth-rate", "0")
    with client(emu) as c:
        headers = user_headers(c)
        assert rate(c.get(CALL_LOG, headers=headers))[:2] == ("Light", "50")  # type: ignore
        assert rate(c.get("/restapi/v1.0", headers=headers))[:2] == ("Light", "50")  # type: ignore
        emu.set_policy(api_group_source="table")
        assert rate(c.get(CALL_LOG, headers=headers))[:2] == ("Heavy", "10")  # type: ignore


def test_group_case_lower_and_fractional_window(make_emulator: Make) -> None:
    emu = make_emulator("--api-group-case", "lower", "--api-window", "2.5", "--auth-rate", "5")
    with client(emu) as c:
        login = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
        assert rate(login) == ("auth", "5", "4", "60")
        response = c.get(CALL_LOG, headers=bearer(login.json()["access_token"]))
        assert rate(response) == ("heavy", "10", "9", "2.5")
    assert emu.counters()["api_calls_by_group"] == {"Heavy": 1}  # canonical names


def test_rate_headers_off(make_emulator: Make) -> None:
    emu = make_emulator("--api-rate-headers", "false", "--api-rate", "enforce", "--api-limits",
                        "Light=1", "--api-penalty", "3")
    with client(emu) as c:
        login = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
        assert login.status_code == 200 and rate(login) is None
        headers = bearer(login.json()["access_token"])
        ok, limited = c.get(EXT, headers=headers), c.get(EXT, headers=headers)
        assert ok.status_code == 200 and rate(ok) is None
        assert limited.status_code == 429 and rate(limited) is None
        assert limited.headers["Retry-After"] == "3"
        assert rate(c.get(EXT)) is None  # 401
        assert emu.set_policy(api_rate_headers=True)["api_rate_headers"] is True
        assert rate(c.get(CALL_LOG, headers=headers)) == ("Heavy", "10", "9", "60")


# -------------------------------------------------------------------- injected penalties
def test_rate_penalty_variants(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "0")  # report mode: only injected penalties refuse
    with client(emu) as c:
        user1, user2 = user_headers(c), user_headers(c, USER2_JWT)
        described = emu.rate_penalty("light", retry_after=30)
        assert described == {"group": "Light", "code": "CMN-301", "retry_after": 30.0,
                             "seconds": 30.0, "client_id": None, "owner_id": None}
        limited = c.get(EXT, headers=user2)
        assert limited.status_code == 429 and limited.json() == RATE_EXCEEDED
        assert limited.headers["Retry-After"] == "30"
        assert rate(limited) == ("Light", "50", "0", "60")
        assert c.post(ECHO, headers=user1).status_code == 200  # Medium: not concerned
        emu.reset_rates()
        assert c.get(EXT, headers=user1).status_code == 200

        # no Retry-After (absent key, then null), CMN-302, default length api_penalty
        for fields in ({"code": "CMN-302"}, {"code": "CMN-302", "retry_after": None}):
            assert emu.rate_penalty("Light", **fields)["seconds"] == 60.0
            limited = c.get(EXT, headers=user1)
            assert limited.status_code == 429 and "Retry-After" not in limited.headers
            assert limited.json()["errors"] == [{"errorCode": "CMN-302",
                                                 "message": "Request rate exceeded"}]
            assert rate(limited) is not None
            emu.reset_rates()

        # CMN-310, a global limit: no X-Rate-Limit-* headers
        emu.rate_penalty("Heavy", code="CMN-310", retry_after=5)
        limited = c.get(CALL_LOG, headers=user1)
        assert limited.status_code == 429 and rate(limited) is None
        assert limited.headers["Retry-After"] == "5"
        assert limited.json()["message"] == "Global request rate exceeded"
        assert limited.json()["errorCode"] == "CMN-310"
        emu.reset_rates()

        # one (app, user) pair only
        emu.rate_penalty("Light", retry_after=9, client_id="demo-client-id", owner_id="100002")
        assert c.get(EXT, headers=user2).status_code == 429
        assert c.get(EXT, headers=user1).status_code == 200
        emu.reset_rates()

        # the Auth group: the token endpoint
        emu.rate_penalty("AUTH", retry_after=7, owner_id="100001")
        refused = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "7"
        assert refused.json() == RATE_EXCEEDED
        assert jwt_login(c, USER2_JWT)["owner_id"] == "100002"
        emu.reset_rates()

        # a short penalty ends `seconds` after the pair's last request
        emu.rate_penalty("Light", seconds=0.5)
        sent, received, status = timed(c, EXT, user1)
        assert status == 429 or received - sent > 0.5
        time.sleep(max(0.0, received + 0.7 - time.monotonic()))
        assert c.get(EXT, headers=user1).status_code == 200
    counters = emu.counters()
    assert counters["api_429_by_group"]["Light"] >= 4
    assert counters["api_429_by_group"]["Heavy"] == 1
    assert counters["rate_limited"] == 1  # the token endpoint's


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "group"),
        ({"group": 5}, "group"),
        ({"group": ""}, "group"),
        ({"group": "NoThrottling"}, "group"),
        ({"group": "Light", "code": "CMN-999"}, "code"),
        ({"group": "Light", "retry_after": -1}, "retry_after"),
        ({"group": "Light", "retry_after": "5"}, "retry_after"),
        ({"group": "Light", "retry_after": True}, "retry_after"),
        ({"group": "Light", "seconds": 0}, "seconds"),
        ({"group": "Light", "client_id": "nobody"}, "client_id"),
        ({"group": "Light", "owner_id": 100001}, "owner_id"),
        ({"group": "Light", "owner_id": "999"}, "owner_id"),
        ({"group": "Light", "colour": "red"}, "colour"),
        ([1, 2], "JSON object"),
    ],
)
def test_rate_penalty_bad_input(emulator: Emulator, body: Any, needle: str) -> None:
    with client(emulator) as c:
        response = c.post("/_emulator/rate-penalty", json=body)
    assert response.status_code == 400
    assert needle in response.json()["error"]


def test_rate_penalty_needs_a_length(make_emulator: Make) -> None:
    emu = make_emulator("--api-penalty", "0")
    with client(emu) as c:
        response = c.post("/_emulator/rate-penalty", json={"group": "Light", "retry_after": 0})
        assert response.status_code == 400 and "seconds" in response.json()["error"]
        assert emu.rate_penalty("Light", retry_after=0, seconds=1)["retry_after"] == 0.0
        limited = c.get(EXT, headers=user_headers(c))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "0"


def test_reset_counters_keeps_penalties_reset_rates_clears_them(make_emulator: Make) -> None:
    emu = make_emulator("--api-rate", "enforce", "--api-limits", "Light=1", "--auth-rate", "1")
    with client(emu) as c:
        headers = user_headers(c)
        assert [c.get(EXT, headers=headers).status_code for _ in range(2)] == [200, 429]
        assert token(c, {"grant_type": JWT_GRANT, "assertion": "x"}).status_code == 400
        assert token(c, {"grant_type": JWT_GRANT, "assertion": "x"}).status_code == 429
        emu.reset_counters()
        counters = emu.counters()
        assert counters["api_calls_by_group"] == counters["api_429_by_group"] == {}
        assert c.get(EXT, headers=headers).status_code == 429  # the penalty survives
        emu.reset_rates()
        assert c.get(EXT, headers=headers).status_code == 200
        assert token(c, {"grant_type": JWT_GRANT, "assertion": "x"}).status_code == 400


# ----------------------------------------------------------------------------- policy
@pytest.mark.parametrize(
    "change,field",
    [
        ({"api_limits": {"Light": 0}}, "api_limits"),
        ({"api_limits": {"Light": -3}}, "api_limits"),
        ({"api_limits": {"Light": "x"}}, "api_limits"),
        ({"api_limits": {"Light": 1.5}}, "api_limits"),
        ({"api_limits": {"Light": True}}, "api_limits"),
        ({"api_limits": {"": 5}}, "api_limits"),
        ({"api_limits": {"light": 1, "Light": 2}}, "api_limits"),
        ({"api_limits": {"Auth": 5}}, "api_limits"),
        ({"api_limits": {"NoThrottling": 5}}, "api_limits"),
        ({"api_limits": [1]}, "api_limits"),
        ({"api_limits": "Light"}, "api_limits"),
        ({"api_window": 0}, "api_window"),
        ({"api_window": -1}, "api_window"),
        ({"api_window": "soon"}, "api_window"),
        ({"api_penalty": -1}, "api_penalty"),
        ({"api_rate": "strict"}, "api_rate"),
        ({"api_group_case": "upper"}, "api_group_case"),
        ({"api_rate_headers": "maybe"}, "api_rate_headers"),
        ({"auth_rate_key": "ip"}, "auth_rate_key"),
        ({"api_group_source": "guess"}, "api_group_source"),
    ],
)
def test_policy_rejects_bad_rate_fields(emulator: Emulator, change: dict, field: str) -> None:
    with client(emulator) as c:
        response = c.post("/_emulator/policy", json=change)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}: ")


def test_policy_rate_fields_accepted(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "0")
    changed = emu.set_policy(api_limits={"light": 7, "Custom": 3}, api_window=2.0,
                             api_penalty=0, api_rate="enforce", api_group_case="lower",
                             api_rate_headers="off")
    assert changed["api_limits"] == {"light": 7, "Custom": 3}
    assert (changed["api_window"], changed["api_penalty"]) == (2.0, 0.0)
    assert changed["api_rate_headers"] is False
    changed = emu.set_policy(api_limits="Light=5, Heavy=2", api_rate_headers=True)
    assert changed["api_limits"] == {"Light": 5, "Heavy": 2}
    with client(emu) as c:
        headers = user_headers(c)
        assert rate(c.get(EXT, headers=headers)) == ("light", "5", "4", "2")
        assert rate(c.post(ECHO, headers=headers)) == ("medium", "40", "39", "2")  # default


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--api-limits", "Light"], "--api-limits"),
        (["--api-limits", "Light=0"], "--api-limits"),
        (["--api-limits", "Light=a"], "--api-limits"),
        (["--api-window", "0"], "--api-window"),
        (["--api-penalty", "-1"], "--api-penalty"),
        (["--api-rate", "strict"], "--api-rate"),
        (["--api-group-case", "upper"], "--api-group-case"),
        (["--api-rate-headers", "maybe"], "--api-rate-headers"),
        (["--auth-rate-key", "ip"], "--auth-rate-key"),
    ],
)
def test_bad_rate_cli_input_exits_2(args: list[str], needle: str) -> None:
    result = subprocess.run([sys.executable, "-m", "rc_emulator", *args], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------- the token endpoint
def test_auth_limit_counts_per_user_and_app(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "2", "--auth-window", "60", "--auth-penalty", "30")
    user1 = {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"}
    user1_password = {"grant_type": "password", "username": "+15550100001",
                      "password": "wrong"}
    with client(emu) as c:
        first = token(c, user1)
        assert rate(first) == ("Auth", "2", "1", "60")
        assert token(c, user1).status_code == 200
        assert token(c, user1).status_code == 429
        assert token(c, user1_password).status_code == 429  # the same (user, app) pair
        user2 = token(c, {"grant_type": JWT_GRANT, "assertion": USER2_JWT})
        assert user2.status_code == 200  # its own budget
        assert rate(user2) == ("Auth", "2", "1", "60")
        assert refresh(c, user2.json()["refresh_token"]).status_code == 200  # user2's owner
        assert token(c, {"grant_type": JWT_GRANT, "assertion": USER2_JWT}).status_code == 429
        other_app = token(c, {**user1_password, "password": "demo-password"}, NOJWT)
        assert other_app.status_code == 200  # same user, another app
        # nobody we know: one "unknown user" bucket per app
        unknown = [token(c, {"grant_type": JWT_GRANT, "assertion": f"bad-{i}"}).status_code
                   for i in range(3)]
        assert unknown == [400, 400, 429]
        assert refresh(c, "not-a-token").status_code == 429  # the same unknown bucket


def test_auth_limit_per_app_variant(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "2", "--auth-rate-key", "app")
    with client(emu) as c:
        jwt_login(c)
        jwt_login(c)
        assert token(c, {"grant_type": JWT_GRANT, "assertion": USER2_JWT}).status_code == 429


# ------------------------------------------------------------------ unit (fake clock)
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def platform(**policy: Any) -> tuple[Platform, FakeClock, Session, Session]:
    clock = FakeClock()
    p = Platform(policy=Policy().updated({"auth_rate": 0, **policy}), clock=clock)
    sessions = []
    basic = "Basic " + base64.b64encode(b"demo-client-id:demo-client-secret").decode()
    for assertion in ("demo-jwt-credential", USER2_JWT):
        body = p.token_request({"grant_type": JWT_GRANT_URN, "assertion": assertion}, basic)
        sessions.append(p.check_access("Bearer " + body["access_token"]))
    return p, clock, sessions[0], sessions[1]


def refused(p: Platform, group: str, session: Session) -> PlatformError | None:
    return p.api_rate_hit(group, session)[1]


def test_unit_penalty_restarts_on_every_request() -> None:
    p, clock, s1, s2 = platform(api_rate="enforce", api_limits={"Light": 2}, api_penalty=10)
    assert refused(p, "Light", s1) is None and refused(p, "Light", s1) is None
    error = refused(p, "Light", s1)
    assert error is not None and error.headers == {"Retry-After": "10"}
    for _ in range(3):
        clock.now += 9
        assert refused(p, "Light", s1) is not None  # 27 s after the first refusal
    assert refused(p, "Light", s2) is None
    clock.now += 10
    headers, error = p.api_rate_hit("Light", s1)
    assert error is None and headers["X-Rate-Limit-Remaining"] == "1"


def test_unit_injected_penalty_restarts_per_pair() -> None:
    p, clock, s1, s2 = platform()
    p.add_penalty("Light", "CMN-301", None, 10)
    assert refused(p, "light", s1) is not None  # t=0: user1's penalty now ends at 10
    clock.now += 8
    assert refused(p, "Light", s1) is not None  # t=8: ends at 18
    clock.now += 4
    assert refused(p, "Light", s2) is None  # t=12: user2 never asked: its penalty ended at 10
    assert refused(p, "Light", s1) is not None  # ends at 22
    assert refused(p, "Medium", s1) is None
    clock.now += 10.5
    assert refused(p, "Light", s1) is None


def test_unit_rate_table_takes_the_most_specific_template() -> None:
    table = RateTable("# comment\nmethod\tpath\tgroup\toperationId\n"
                      "GET\t/a/{x}/c\tHeavy\to1\n"
                      "GET\t/a/b/{y}\tLight\to2\n"
                      "GET\t/a/b/c\tMedium\to3\n"
                      "GET\t/a/{x}/{y}\tNoThrottling\to4\n"
                      "POST\t/a/{x}/{y}\tHeavy\to5\n")
    assert table.lookup("GET", "/a/b/c") == "Medium"
    assert table.lookup("GET", "/a/b/z") == "Light"
    assert table.lookup("GET", "/a/z/c") == "Heavy"
    assert table.lookup("GET", "/a/z/z") == "NoThrottling"
    assert table.lookup("HEAD", "/a/b/c") == "Medium"
    assert table.lookup("POST", "/a/b/c") == "Heavy"
    assert table.lookup("GET", "/a//c") is None  # a param never matches an empty segment
    assert table.lookup("DELETE", "/a/b/c") is None
    assert table.lookup("GET", "/a/b") is None


def test_unit_bundled_table() -> None:
    counts = rate_table().counts()
    assert counts == {"Light": 123, "Medium": 144, "Heavy": 74, "NoThrottling": 6}
    assert request_group("GET", "/restapi/v1.0") is None  # /restapi/{apiVersion}
    assert request_group("GET", "/restapi/v1.0/account/~/extension/~/call-log") == "Heavy"
    assert request_group("POST", "/restapi/v1.0/subscription") == "Medium"
    assert request_group("GET", "/restapi/v1.0/unknown/thing") == "Light"


def test_unit_formats_and_limits_parsing() -> None:
    assert [format_window(w) for w in (60, 60.0, 2.5, 0.25)] == ["60", "60", "2.5", "0.25"]
    assert [format_retry_after(s) for s in (0, 0.2, 1.5, 60)] == ["0", "1", "2", "60"]
    assert parse_limits("Light=5,heavy=1,") == {"Light": 5, "heavy": 1}
    assert Policy(api_limits={"light": 7}).api_limit("LIGHT") == 7
    assert Policy(api_limits={"light": 7}).api_limit("Medium") == 40
    with pytest.raises(PolicyError, match="api_limits"):
        parse_limits("Light=5,Light=6")
