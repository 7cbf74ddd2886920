"""HTTP tests of policies, fault options and admin endpoints (a fresh emulator per test)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from rc_emulator.tokens import token_kind

from tests.emulator.emu_client import (
    BASIC,
    EXT,
    JWT_GRANT,
    bearer,
    client,
    jwt_login,
    oauth_error,
    refresh,
    token,
    token_invalid,
)
from tests.support.emulator import Emulator

Make = Callable[..., Emulator]
EXPIRED_API = token_invalid("OAU-210", "Token expired")
EXPIRED_OAUTH = {
    "error": "invalid_grant",
    "errors": [{"errorCode": "OAU-210", "message": "Token expired"}],
    "error_description": "Token expired",
}


def test_rate_limit_429_and_penalty(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "2", "--auth-window", "60", "--auth-penalty", "2")
    form = {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"}
    with client(emu) as c:
        ok = token(c, form)
        assert ok.status_code == 200
        assert ok.headers["X-Rate-Limit-Group"] == "Auth"
        assert ok.headers["X-Rate-Limit-Remaining"] == "1"
        assert token(c, form).status_code == 200
        limited = token(c, form)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "2"
        assert limited.json() == {
            "errorCode": "CMN-301",
            "message": "Request rate exceeded",
            "errors": [{"errorCode": "CMN-301", "message": "Request rate exceeded"}],
        }
        # another app is not limited
        other = token(
            c,
            {"grant_type": "password", "username": "+15550100001", "password": "demo-password"},
            ("demo-nojwt-client", "demo-nojwt-secret"),
        )
        assert other.status_code == 200
        time.sleep(1.2)
        assert token(c, form).status_code == 429  # restarts the 2 s penalty
        time.sleep(1.2)
        assert token(c, form).status_code == 429  # would have been over without the restart
        time.sleep(2.3)
        assert token(c, form).status_code == 200
    counters = emu.counters()
    assert counters["token_calls"] == 7
    assert counters["rate_limited"] == 3
    assert counters["token_calls_by_grant"]["jwt"] == 6
    assert counters["token_errors_by_code"] == {"CMN-301": 3}
    assert counters["logins"] == 4


def test_expired_envelopes(make_emulator: Make) -> None:
    emu = make_emulator("--expired-envelope", "alternate")
    with client(emu) as c:
        access = jwt_login(c)["access_token"]
        emu.expire_now()
        bodies = [c.get(EXT, headers=bearer(access)) for _ in range(3)]
        assert [r.status_code for r in bodies] == [401, 401, 401]
        assert [r.json() for r in bodies] == [EXPIRED_API, EXPIRED_OAUTH, EXPIRED_API]
        assert emu.set_policy(expired_envelope="oauth")["expired_envelope"] == "oauth"
        assert c.get(EXT, headers=bearer(access)).json() == EXPIRED_OAUTH
        emu.set_policy(expired_envelope="api", expired_code="OAU-128")
        assert c.get(EXT, headers=bearer(access)).json() == token_invalid(
            "OAU-128", "Access token expired"
        )
    assert emu.counters()["api_401_by_code"] == {"OAU-210": 4, "OAU-128": 1}


def test_cli_expired_code_and_envelope(make_emulator: Make) -> None:
    emu = make_emulator("--expired-envelope", "oauth", "--expired-code", "OAU-128")
    with client(emu) as c:
        access = jwt_login(c)["access_token"]
        emu.expire_now()
        assert c.get(EXT, headers=bearer(access)).json() == oauth_error(
            "invalid_grant", "OAU-128", "Access token expired"
        )


def test_access_token_expires_in_real_time(make_emulator: Make) -> None:
    emu = make_emulator("--access-ttl", "1", "--refresh-ttl", "2")
    with client(emu) as c:
        body = jwt_login(c)
        assert (body["expires_in"], body["refresh_token_expires_in"]) == (1, 2)
        assert c.get(EXT, headers=bearer(body["access_token"])).status_code == 200
        time.sleep(1.1)
        expired = c.get(EXT, headers=bearer(body["access_token"]))
        assert (expired.status_code, expired.json()) == (401, EXPIRED_API)
        fresh = refresh(c, body["refresh_token"])
        assert fresh.status_code == 200
        time.sleep(2.1)
        gone = refresh(c, fresh.json()["refresh_token"])
        assert gone.json() == oauth_error("invalid_grant", "OAU-210", "Token expired")


def test_session_cap_evict_and_refuse(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "0")
    with client(emu) as c:
        logins = [jwt_login(c) for _ in range(6)]
        first = c.get(EXT, headers=bearer(logins[0]["access_token"]))
        assert first.json() == token_invalid("OAU-213", "Token not found")
        assert c.get(EXT, headers=bearer(logins[5]["access_token"])).status_code == 200
        counters = emu.counters()
        assert counters["evictions"] == 1
        assert counters["live_sessions"] == {"demo-client-id/100001": 5}
        assert counters["max_live_sessions"] == {"demo-client-id/100001": 5}
        assert counters["max_live_sessions_proxy"] == {"demo-client-id/100001": 5}
        emu.set_policy(session_cap_policy="refuse")
        refused = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
        assert refused.json()["errors"][0]["errorCode"] == "OAU-260"
        assert len(emu.sessions()) == 5


def test_cli_refuse_policy_and_cap(make_emulator: Make) -> None:
    emu = make_emulator("--session-cap", "1", "--session-cap-policy", "refuse")
    with client(emu) as c:
        jwt_login(c)
        refused = token(c, {"grant_type": JWT_GRANT, "assertion": "demo-jwt-credential"})
        assert refused.json()["errors"][0]["errorCode"] == "OAU-260"


def test_refresh_grace(make_emulator: Make) -> None:
    emu = make_emulator("--refresh-grace", "5")
    with client(emu) as c:
        first = jwt_login(c)
        second = refresh(c, first["refresh_token"]).json()
        replay = refresh(c, first["refresh_token"])
        assert replay.status_code == 200
        assert replay.json() == second
        emu.set_policy(refresh_grace=0)
        late = refresh(c, first["refresh_token"])
        assert late.json()["errors"][0]["errorCode"] == "OAU-211"


def test_admin_endpoints(make_emulator: Make) -> None:
    emu = make_emulator("--auth-rate", "0")
    with client(emu) as c:
        a = jwt_login(c)
        b = jwt_login(c, "demo-jwt-credential-2")
        c.get(EXT)  # AGW-401
        counters = emu.counters()
        assert counters["token_calls"] == 2
        assert counters["token_calls_by_grant"] == {
            "jwt": 2,
            "password": 0,
            "refresh_token": 0,
            "authorization_code": 0,
            "other": 0,
        }
        assert counters["logins"] == 2
        assert counters["api_requests"] == 1
        assert counters["api_401_by_code"] == {"AGW-401": 1}
        assert counters["live_sessions"] == {
            "demo-client-id/100001": 1,
            "demo-client-id/100002": 1,
        }
        for key in ("refreshes", "revocations", "evictions", "rate_limited", "max_live_sessions"):
            assert key in counters
        sessions = emu.sessions()
        assert {s["session_id"] for s in sessions} == {a["session_id"], b["session_id"]}
        for s in sessions:
            assert set(s) >= {
                "session_id",
                "client_id",
                "owner_id",
                "outside",
                "created",
                "access_expires_in",
                "refresh_expires_in",
            }
            assert not any(isinstance(v, str) and token_kind(v) for v in s.values())
        emu.reset_counters()
        assert emu.counters()["token_calls"] == 0
        assert emu.counters()["max_live_sessions"] == counters["live_sessions"]

        emu.expire_now()
        assert c.get(EXT, headers=bearer(a["access_token"])).json() == EXPIRED_API
        a2 = refresh(c, a["refresh_token"]).json()
        emu.expire_now(refresh=True)
        assert refresh(c, a2["refresh_token"]).json()["errors"][0]["errorCode"] == "OAU-210"
        assert emu.sessions() == []

        c3 = jwt_login(c)
        assert emu.revoke_all() == 1
        gone = c.get(EXT, headers=bearer(c3["access_token"]))
        assert gone.json() == token_invalid("OAU-213", "Token not found")
        assert refresh(c, c3["refresh_token"]).json()["errors"][0]["errorCode"] == "OAU-211"


def test_outside_login(make_emulator: Make) -> None:
    emu = make_emulator("--session-cap", "3")
    with client(emu) as c:
        mine = jwt_login(c)
        emu.outside_login(count=2)
        assert c.get(EXT, headers=bearer(mine["access_token"])).status_code == 200
        tokens = emu.outside_login_tokens(count=1)
        assert len(tokens) == 1 and tokens[0]["owner_id"] == "100001"
        assert c.get(EXT, headers=bearer(tokens[0]["access_token"])).status_code == 200
        evicted = c.get(EXT, headers=bearer(mine["access_token"]))
        assert evicted.json() == token_invalid("OAU-213", "Token not found")
        emu.outside_login(count=1, client_id="demo-nojwt-client", owner_id="100002")
    counters = emu.counters()
    assert counters["token_calls"] == 1
    assert counters["evictions"] == 1
    assert counters["max_live_sessions"]["demo-client-id/100001"] == 3
    assert counters["max_live_sessions_proxy"] == {"demo-client-id/100001": 1}
    assert counters["max_live_sessions_outside"] == {"demo-client-id/100001": 1}
    assert counters["live_sessions"] == {"demo-client-id/100001": 3, "demo-nojwt-client/100002": 1}
    assert sum(s["outside"] for s in emu.sessions()) == 4
    with client(emu) as c:
        bad = c.post("/_emulator/outside-login", json={"client_id": "nobody"})
        assert bad.status_code == 400
        assert c.post("/_emulator/outside-login", json={"count": -1}).status_code == 400


def test_policy_endpoint(make_emulator: Make) -> None:
    emu = make_emulator("--access-ttl", "100")
    with client(emu) as c:
        policy = c.get("/_emulator/policy").json()
        assert policy == {
            "access_ttl": 100.0,
            "refresh_ttl": 604800.0,
            "auth_rate": 5,
            "auth_window": 60.0,
            "auth_penalty": 60.0,
            "session_cap": 5,
            "session_cap_policy": "evict",
            "refresh_grace": 0.0,
            "expired_envelope": "api",
            "expired_code": "OAU-210",
            "token_delay": 0.0,
            "revoke_issued": 0,
            "compress": "off",
            "chunk_bytes": 0,
            "auth_rate_key": "user",
            "api_rate": "report",
            "api_limits": {"Light": 50, "Medium": 40, "Heavy": 10},
            "api_window": 60.0,
            "api_penalty": 60.0,
            "api_group_case": "title",
            "api_group_source": "table",
            "api_rate_headers": True,
        }
        changed = emu.set_policy(access_ttl=2, auth_rate=0)
        assert (changed["access_ttl"], changed["auth_rate"]) == (2.0, 0)
        assert jwt_login(c)["expires_in"] == 2
        for bad in ({"access_ttl": -5}, {"nope": 1}, {"session_cap_policy": "x"},
                    {"revoke_issued": -1}, {"compress": "lzma"}, {"chunk_bytes": -1},
                    {"chunk_bytes": 1.5}):
            response = c.post("/_emulator/policy", json=bad)
            assert response.status_code == 400
            assert "error" in response.json()
        assert c.post("/_emulator/policy", content=b"[1,2]").status_code == 400
        assert c.get("/_emulator/policy").json()["access_ttl"] == 2.0


def test_token_delay(make_emulator: Make) -> None:
    emu = make_emulator("--token-delay", "0.8")
    with client(emu) as c:
        start = time.monotonic()
        jwt_login(c)
        assert time.monotonic() - start >= 0.8
        emu.set_policy(token_delay=0)
        start = time.monotonic()
        jwt_login(c)
        assert time.monotonic() - start < 0.6


def test_public_and_media_urls(make_emulator: Make) -> None:
    emu = make_emulator(
        "--public-url",
        "https://platform.example.test/",
        "--media-url",
        "https://media.example.test",
    )
    with client(emu) as c:
        headers = bearer(jwt_login(c)["access_token"])
        page = c.get(EXT + "/call-log?perPage=5&view=Simple", headers=headers).json()
        assert page["uri"] == (
            "https://platform.example.test" + EXT + "/call-log?view=Simple&page=1&perPage=5"
        )
        assert page["navigation"]["nextPage"]["uri"].startswith("https://platform.example.test/")
        recording = page["records"][0]["recording"]
        assert recording["contentUri"].startswith("https://media.example.test/restapi/v1.0/")
        info = c.get(EXT, headers=headers).json()
        assert info["uri"] == "https://platform.example.test" + EXT


def test_token_endpoint_rate_limit_default_is_five(make_emulator: Make) -> None:
    emu = make_emulator()
    with client(emu) as c:
        statuses = [
            token(c, {"grant_type": JWT_GRANT, "assertion": "bad"}, BASIC).status_code
            for _ in range(6)
        ]
    assert statuses == [400] * 5 + [429]
    assert emu.counters()["rate_limited"] == 1


@pytest.mark.parametrize("count", [1, 3])
def test_helper_outside_login_defaults(make_emulator: Make, count: int) -> None:
    emu = make_emulator()
    emu.outside_login(count)
    assert emu.counters()["live_sessions"] == {"demo-client-id/100001": count}
    assert isinstance(emu.revoke_all(), int)
    with pytest.raises(httpx.HTTPStatusError):
        emu.set_policy(session_cap=0)
