"""Unit tests of the emulator's platform logic (rc_emulator.state) with a fake clock."""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from rc_emulator import errors
from rc_emulator.errors import PlatformError
from rc_emulator.media import content_sha256
from rc_emulator.policy import Policy, PolicyError
from rc_emulator.seed import JWT_GRANT_URN, SeedError
from rc_emulator.state import DEAD_RETENTION, Platform, pkce_s256
from rc_emulator.tokens import new_token, token_kind

from tests.emulator.emu_client import TOKEN_FIELDS
from tests.support.emulator import recording_sha256


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def basic(client_id: str = "demo-client-id", secret: str = "demo-client-secret") -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def make(**policy: Any) -> tuple[Platform, FakeClock]:
    clock = FakeClock()
    base = {"auth_rate": 0}
    base.update(policy)
    return Platform(policy=Policy().updated(base), clock=clock), clock


def jwt_login(p: Platform, assertion: str = "demo-jwt-credential", **extra: str) -> dict:
    form = {"grant_type": JWT_GRANT_URN, "assertion": assertion, **extra}
    return p.token_request(form, basic())


def refresh(p: Platform, token: str, auth: str | None = None) -> dict:
    return p.token_request({"grant_type": "refresh_token", "refresh_token": token}, auth or basic())


def err(fn: Any, *args: Any) -> PlatformError:
    with pytest.raises(PlatformError) as info:
        fn(*args)
    return info.value


def api_err(p: Platform, token: str) -> PlatformError:
    return err(p.check_access, f"Bearer {token}")


def test_tokens_are_parsable_and_distinct_from_garbage() -> None:
    for kind in ("A", "R", "C"):
        token = new_token(kind)  # type: ignore[arg-type]
        assert token_kind(token) == kind
        assert token_kind(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    assert token_kind("garbage") is None
    assert token_kind("x" * 44) is None
    assert token_kind("") is None
    assert new_token("A") != new_token("A")


def test_jwt_login_success_body() -> None:
    p, _ = make()
    body = jwt_login(p)
    assert set(body) == set(TOKEN_FIELDS)
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["refresh_token_expires_in"] == 604800
    assert body["owner_id"] == "100001"
    assert p.check_access("Bearer " + body["access_token"]).session_id == body["session_id"]
    assert p.check_access("bearer " + body["access_token"])  # scheme is case-insensitive
    assert p.counters["logins"] == 1


def test_password_login_and_wrong_credentials() -> None:
    p, _ = make()
    form = {"grant_type": "password", "username": "+15550100002", "password": "demo-password-2"}
    assert p.token_request(form, basic())["owner_id"] == "100002"
    assert p.token_request({**form, "extension": "102"}, basic())["owner_id"] == "100002"
    for bad in ({"password": "nope"}, {"extension": "101"}, {"username": "+19999999999"}):
        exc = err(p.token_request, {**form, **bad}, basic())
        assert (exc.status, exc.body) == (
            400,
            {
                "error": "invalid_grant",
                "error_description": "Invalid resource owner credentials",
                "errors": [
                    {"errorCode": "OAU-140", "message": "Invalid resource owner credentials"}
                ],
            },
        )
    exc = err(jwt_login, p, "not-a-credential")
    assert exc.code == "OAU-140"
    assert p.counters["token_errors_by_code"]["OAU-140"] == 4


@pytest.mark.parametrize(
    "auth,form_extra",
    [
        (None, {}),
        ("Basic !!!notbase64", {}),
        ("Bearer abc", {}),
        (basic(secret="wrong"), {}),
        (basic("unknown-client", "x"), {}),
        (None, {"client_id": "demo-client-id"}),  # confidential client without its secret
        (basic(), {"client_id": "demo-nojwt-client"}),
    ],
)
def test_invalid_client(auth: str | None, form_extra: dict) -> None:
    p, _ = make()
    form = {"grant_type": JWT_GRANT_URN, "assertion": "demo-jwt-credential", **form_extra}
    exc = err(p.token_request, form, auth)
    assert exc.status == 400
    assert exc.body["error"] == "invalid_client"
    assert exc.body["errors"][0]["errorCode"] == "OAU-153"
    assert exc.body["error_description"].startswith("Invalid client: ")
    assert exc.body["errors"][0]["message"] == exc.body["error_description"]


def test_unauthorized_unsupported_and_missing_grant() -> None:
    p, _ = make()
    form = {"grant_type": JWT_GRANT_URN, "assertion": "demo-jwt-credential"}
    exc = err(p.token_request, form, basic("demo-nojwt-client", "demo-nojwt-secret"))
    assert (exc.body["error"], exc.code) == ("unauthorized_client", "OAU-251")
    public = {"grant_type": "password", "client_id": "demo-public-client", "username": "x"}
    assert err(p.token_request, public, None).code == "OAU-251"
    exc = err(p.token_request, {"grant_type": "client_credentials"}, basic())
    assert (exc.body["error"], exc.code) == ("unsupported_grant_type", "OAU-250")
    exc = err(p.token_request, {}, basic())
    assert (exc.body["error"], exc.code) == ("invalid_request", "OAU-101")
    exc = err(p.token_request, {"grant_type": JWT_GRANT_URN}, basic())
    assert exc.body["error_description"] == "Parameter [assertion] is not specified"
    assert p.counters["token_calls_by_grant"] == {
        "jwt": 2,
        "password": 1,
        "refresh_token": 0,
        "authorization_code": 0,
        "other": 2,
    }


def test_access_token_expiry_and_envelopes() -> None:
    p, clock = make(access_ttl=10)
    token = jwt_login(p)["access_token"]
    clock.advance(9.9)
    p.check_access("Bearer " + token)
    clock.advance(0.1)
    exc = api_err(p, token)
    assert (exc.status, exc.body) == (
        401,
        {
            "errorCode": "TokenInvalid",
            "message": "Token expired",
            "errors": [{"errorCode": "OAU-210", "message": "Token expired"}],
        },
    )
    p.set_policy({"expired_code": "OAU-128"})
    assert api_err(p, token).body["errors"] == [
        {"errorCode": "OAU-128", "message": "Access token expired"}
    ]
    p.set_policy({"expired_code": "OAU-210", "expired_envelope": "oauth"})
    assert api_err(p, token).body == {
        "error": "invalid_grant",
        "errors": [{"errorCode": "OAU-210", "message": "Token expired"}],
        "error_description": "Token expired",
    }
    p.set_policy({"expired_envelope": "alternate"})
    shapes = ["error" in api_err(p, token).body for _ in range(4)]
    assert shapes == [False, True, False, True]
    assert p.counters["api_401_by_code"]["OAU-210"] == 6


def test_refresh_rotates_in_same_session() -> None:
    p, clock = make()
    first = jwt_login(p)
    clock.advance(5)
    second = refresh(p, first["refresh_token"])
    assert second["session_id"] == first["session_id"]
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert p.check_access("Bearer " + second["access_token"])
    exc = api_err(p, first["access_token"])
    assert (exc.code, exc.body["message"]) == ("OAU-129", "Access token corrupted")
    exc = err(refresh, p, first["refresh_token"])
    assert exc.body == {
        "error": "invalid_grant",
        "error_description": "Token revoked",
        "errors": [{"errorCode": "OAU-211", "message": "Token revoked"}],
    }
    assert p.counters["refreshes"] == 1
    assert p.counters["logins"] == 1
    assert len(p.sessions_snapshot()) == 1
    # once the session is gone, the rotated-out token answers OAU-213
    p.revoke(second["access_token"])
    assert api_err(p, first["access_token"]).code == "OAU-213"


def test_refresh_token_expired_and_unknown() -> None:
    p, clock = make(access_ttl=10, refresh_ttl=100)
    body = jwt_login(p)
    clock.advance(100)
    exc = err(refresh, p, body["refresh_token"])
    assert exc.body == {
        "error": "invalid_grant",
        "error_description": "Token expired",
        "errors": [{"errorCode": "OAU-210", "message": "Token expired"}],
    }
    assert api_err(p, body["access_token"]).code == "OAU-210"
    assert err(refresh, p, new_token("R")).code == "OAU-213"
    assert err(refresh, p, "garbage").code == "OAU-213"
    assert err(refresh, p, body["access_token"]).code == "OAU-213"
    # a refresh token can only be used by the app it was issued to
    other = jwt_login(p)
    pw = basic("demo-nojwt-client", "demo-nojwt-secret")
    assert err(refresh, p, other["refresh_token"], pw).code == "OAU-213"
    # after the retention period an expired session is forgotten entirely
    clock.advance(DEAD_RETENTION + 200)
    assert api_err(p, body["access_token"]).code == "OAU-213"


def test_refresh_grace_window() -> None:
    p, clock = make(refresh_grace=5)
    first = jwt_login(p)
    second = refresh(p, first["refresh_token"])
    clock.advance(3)
    assert refresh(p, first["refresh_token"]) == second
    assert p.counters["refresh_replays"] == 1
    clock.advance(2.5)
    assert err(refresh, p, first["refresh_token"]).code == "OAU-211"
    p.set_policy({"refresh_grace": 0})
    third = refresh(p, second["refresh_token"])
    assert err(refresh, p, second["refresh_token"]).code == "OAU-211"
    assert p.check_access("Bearer " + third["access_token"])


def test_ttl_request_parameters_are_clamped() -> None:
    p, _ = make()
    assert jwt_login(p, access_token_ttl="60")["expires_in"] == 600
    assert jwt_login(p, access_token_ttl="99999")["expires_in"] == 3600
    assert jwt_login(p, access_token_ttl="1800")["expires_in"] == 1800
    assert jwt_login(p, refresh_token_ttl="7200")["refresh_token_expires_in"] == 7200
    bad_ttl = {"grant_type": JWT_GRANT_URN, "assertion": "demo-jwt-credential"}
    assert err(p.token_request, {**bad_ttl, "access_token_ttl": "abc"}, basic()).code == "OAU-102"
    short, _ = make(access_ttl=2, refresh_ttl=4)
    body = jwt_login(short)
    assert (body["expires_in"], body["refresh_token_expires_in"]) == (2, 4)
    assert jwt_login(short, access_token_ttl="3600")["expires_in"] == 3600
    fractional, _ = make(access_ttl=0.5)
    assert jwt_login(fractional)["expires_in"] == 1


def test_session_cap_evicts_oldest() -> None:
    p, clock = make(session_cap=5)
    bodies = []
    for _ in range(6):
        bodies.append(jwt_login(p))
        clock.advance(1)
    assert api_err(p, bodies[0]["access_token"]).code == "OAU-213"
    assert err(refresh, p, bodies[0]["refresh_token"]).code == "OAU-211"
    for body in bodies[1:]:
        assert p.check_access("Bearer " + body["access_token"])
    snap = p.counters_snapshot()
    assert snap["evictions"] == 1
    assert snap["live_sessions"] == {"demo-client-id/100001": 5}
    assert snap["max_live_sessions"] == {"demo-client-id/100001": 5}
    # another user or app has its own cap
    assert jwt_login(p, "demo-jwt-credential-2")["owner_id"] == "100002"
    assert p.counters_snapshot()["evictions"] == 1


def test_session_cap_refuse_policy() -> None:
    p, _ = make(session_cap=2, session_cap_policy="refuse")
    a = jwt_login(p)
    jwt_login(p)
    exc = err(jwt_login, p)
    assert exc.status == 400
    assert (exc.body["error"], exc.code) == ("invalid_grant", "OAU-260")
    assert p.check_access("Bearer " + a["access_token"])
    p.revoke(a["refresh_token"])
    jwt_login(p)
    assert p.counters["evictions"] == 0


def test_expired_sessions_do_not_count_toward_cap() -> None:
    p, clock = make(session_cap=2, access_ttl=10, refresh_ttl=20)
    first = jwt_login(p)
    jwt_login(p)
    clock.advance(20)
    jwt_login(p)
    jwt_login(p)
    assert p.counters["evictions"] == 0
    assert api_err(p, first["access_token"]).code == "OAU-210"


def test_revoke_kills_the_whole_session() -> None:
    p, _ = make()
    body = jwt_login(p)
    assert p.revoke(body["access_token"]) is True
    assert api_err(p, body["access_token"]).code == "OAU-213"
    assert err(refresh, p, body["refresh_token"]).code == "OAU-211"
    assert p.revoke(body["access_token"]) is False
    assert p.revoke(new_token("A")) is False
    assert p.revoke("garbage") is False
    other = jwt_login(p)
    rotated = refresh(p, other["refresh_token"])
    assert p.revoke(other["access_token"]) is True  # a rotated-out token still names the session
    assert api_err(p, rotated["access_token"]).code == "OAU-213"
    assert p.counters["revocations"] == 2


def test_api_auth_errors() -> None:
    p, _ = make()
    for header in (None, "", "   "):
        exc = err(p.check_access, header)
        assert (exc.status, exc.body) == (
            401,
            {"errorCode": "AGW-401", "message": "Authorization header is not specified"},
        )
    for header in ("Bearer garbage", "Bearer", "Basic abc", "Bearer " + "A" * 44):
        exc = err(p.check_access, header)
        assert exc.body == {
            "errorCode": "TokenInvalid",
            "message": "Unparsable access token",
            "errors": [{"errorCode": "OAU-149", "message": "Unparsable access token"}],
        }
    exc = api_err(p, new_token("A"))
    assert exc.body == {
        "errorCode": "TokenInvalid",
        "message": "Token not found",
        "errors": [{"errorCode": "OAU-213", "message": "Token not found"}],
    }
    assert api_err(p, jwt_login(p)["refresh_token"]).code == "OAU-213"
    assert p.counters["api_requests"] == 9
    assert dict(p.counters["api_401_by_code"]) == {"AGW-401": 3, "OAU-149": 4, "OAU-213": 2}


def test_rate_limiter_penalty_restarts() -> None:
    p, clock = make(auth_rate=2, auth_window=60, auth_penalty=10)
    jwt_login(p)
    jwt_login(p)
    exc = err(jwt_login, p)
    assert exc.status == 429
    assert exc.headers == {"Retry-After": "10"}
    assert exc.body == {
        "errorCode": "CMN-301",
        "message": "Request rate exceeded",
        "errors": [{"errorCode": "CMN-301", "message": "Request rate exceeded"}],
    }
    for _ in range(3):  # each call during the penalty restarts it
        clock.advance(9)
        assert err(jwt_login, p).status == 429
    clock.advance(10)
    jwt_login(p)
    # other apps are not affected
    form = {"grant_type": "password", "username": "+15550100001", "password": "demo-password"}
    p.token_request(form, basic("demo-nojwt-client", "demo-nojwt-secret"))
    c = p.counters
    assert (c["token_calls"], c["rate_limited"], c["logins"]) == (8, 4, 4)
    assert c["token_errors_by_code"]["CMN-301"] == 4


def test_rate_limiter_sliding_window() -> None:
    p, clock = make(auth_rate=2, auth_window=10, auth_penalty=0)
    jwt_login(p)
    clock.advance(6)
    jwt_login(p)
    clock.advance(4)  # the first call has left the window
    jwt_login(p)
    assert err(jwt_login, p).status == 429
    assert p.auth_rate_remaining({}, basic()) == 2  # penalty 0: over immediately, window reset


def _authorize(p: Platform, **params: str) -> dict[str, list[str]]:
    url = p.authorize(
        {"response_type": "code", "redirect_uri": "http://localhost:8080/cb", **params}
    )
    assert url.startswith("http://localhost:8080/cb?")
    return parse_qs(urlsplit(url).query)


def test_authorization_code_with_pkce() -> None:
    p, clock = make()
    verifier = "v" * 50
    challenge = pkce_s256(verifier)
    assert (
        challenge
        == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=")
        .decode()
    )
    q = _authorize(
        p,
        client_id="demo-public-client",
        state="st-1",
        code_challenge=challenge,
        code_challenge_method="S256",
        login_hint="+15550100002",
    )
    assert q["state"] == ["st-1"]
    code = q["code"][0]
    form = {
        "grant_type": "authorization_code",
        "client_id": "demo-public-client",
        "code": code,
        "redirect_uri": "http://localhost:8080/cb",
    }
    assert err(p.token_request, form, None).code == "OAU-262"  # verifier missing
    assert err(p.token_request, {**form, "code_verifier": "w" * 50}, None).code == "OAU-262"
    wrong_uri = {**form, "code_verifier": verifier, "redirect_uri": "http://localhost:8080/x"}
    assert err(p.token_request, wrong_uri, None).code == "OAU-261"
    body = p.token_request({**form, "code_verifier": verifier}, None)
    assert body["owner_id"] == "100002"
    assert err(p.token_request, {**form, "code_verifier": verifier}, None).code == "OAU-211"
    # public client refreshes with client_id in the body
    form_r = {
        "grant_type": "refresh_token",
        "client_id": "demo-public-client",
        "refresh_token": body["refresh_token"],
    }
    assert p.token_request(form_r, None)["session_id"] == body["session_id"]
    # codes live 60 s
    code2 = _authorize(
        p, client_id="demo-public-client", code_challenge=challenge, code_challenge_method="S256"
    )["code"][0]
    clock.advance(60)
    expired = {**form, "code": code2, "code_verifier": verifier}
    assert err(p.token_request, expired, None).code == "OAU-210"
    assert err(p.token_request, {**form, "code": new_token("C")}, None).code == "OAU-213"


def test_authorization_code_confidential_client_and_binding() -> None:
    p, _ = make()
    code = _authorize(p, client_id="demo-client-id")["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://localhost:8080/cb",
    }
    other = basic("demo-nojwt-client", "demo-nojwt-secret")
    assert err(p.token_request, form, other).code == "OAU-251"
    body = p.token_request(form, basic())
    assert body["owner_id"] == "100001"  # default: the first user
    assert p.counters["logins"] == 1


@pytest.mark.parametrize(
    "params,code",
    [
        ({"client_id": "demo-public-client"}, "OAU-101"),  # public: challenge required
        ({"client_id": "demo-client-id", "code_challenge": "x" * 43}, "OAU-102"),  # plain
        (
            {
                "client_id": "demo-client-id",
                "code_challenge": "short",
                "code_challenge_method": "S256",
            },
            "OAU-102",
        ),
        ({"client_id": "nobody"}, "OAU-153"),
        ({"client_id": "demo-nojwt-client"}, "OAU-251"),
        ({"client_id": "demo-client-id", "response_type": "token"}, "OAU-250"),
        ({"client_id": "demo-client-id", "redirect_uri": "not a url"}, "OAU-102"),
        ({"client_id": "demo-client-id", "redirect_uri": ""}, "OAU-101"),
        ({"client_id": "demo-client-id", "login_hint": "nobody"}, "OAU-102"),
    ],
)
def test_authorize_errors(params: dict[str, str], code: str) -> None:
    p, _ = make()
    full = {"response_type": "code", "redirect_uri": "http://localhost/cb", **params}
    exc = err(p.authorize, full)
    assert (exc.status, exc.code) == (400, code)
    assert set(exc.body) == {"error", "error_description", "errors"}


def test_outside_logins_are_tagged() -> None:
    p, _ = make(session_cap=3)
    mine = jwt_login(p)
    tokens, refused = p.outside_login("demo-client-id", "100001", 3)
    assert (len(tokens), refused) == (3, 0)
    assert api_err(p, mine["access_token"]).code == "OAU-213"  # evicted by the outsiders
    snap = p.counters_snapshot()
    assert snap["token_calls"] == 1
    assert (snap["logins"], snap["outside_logins"], snap["evictions"]) == (1, 3, 1)
    assert snap["max_live_sessions"] == {"demo-client-id/100001": 3}
    assert snap["max_live_sessions_proxy"] == {"demo-client-id/100001": 1}
    assert snap["live_sessions"] == {"demo-client-id/100001": 3}
    assert [s["outside"] for s in p.sessions_snapshot()] == [True, True, True]
    p.set_policy({"session_cap_policy": "refuse"})
    assert p.outside_login("demo-client-id", "100001", 2) == ([], 2)
    with pytest.raises(ValueError):
        p.outside_login("nobody", "100001", 1)


def test_admin_operations() -> None:
    p, _ = make()
    a = jwt_login(p)
    b = jwt_login(p, "demo-jwt-credential-2")
    assert p.expire_now() == 2
    assert api_err(p, a["access_token"]).code == "OAU-210"
    c = refresh(p, a["refresh_token"])  # refresh tokens survive expire_now without refresh=1
    p.expire_now(refresh=True)
    assert err(refresh, p, c["refresh_token"]).code == "OAU-210"
    assert p.sessions_snapshot() == []
    d = jwt_login(p)
    assert p.revoke_all() == 1
    assert api_err(p, d["access_token"]).code == "OAU-213"
    assert err(refresh, p, b["refresh_token"]).code == "OAU-210"
    p.reset_counters()
    snap = p.counters_snapshot()
    assert snap["token_calls"] == 0 and snap["max_live_sessions"] == {}
    for s in p.sessions_snapshot():
        assert not any(isinstance(v, str) and token_kind(v) for v in s.values())


def test_policy_validation() -> None:
    policy = Policy()
    assert policy.updated({"access_ttl": "2", "auth_rate": 3.0}).access_ttl == 2.0
    for change in (
        {"access_ttl": -1},
        {"access_ttl": 0},
        {"auth_rate": -1},
        {"auth_rate": 1.5},
        {"session_cap": 0},
        {"session_cap_policy": "maybe"},
        {"expired_envelope": "xml"},
        {"expired_code": "OAU-999"},
        {"token_delay": "soon"},
        {"no_such_field": 1},
        {"refresh_grace": True},
    ):
        with pytest.raises(PolicyError):
            policy.updated(change)


def test_error_builders_match_platform_md() -> None:
    assert errors.rate_limited(60).headers == {"Retry-After": "60"}
    assert errors.rate_limited(0.2).headers == {"Retry-After": "1"}
    assert errors.missing_auth_header().body == {
        "errorCode": "AGW-401",
        "message": "Authorization header is not specified",
    }


def test_recording_digest_helper_matches_media() -> None:
    for size in (0, 1, 65535, 65536, 65537, 300_000):
        assert recording_sha256("700000001", size) == content_sha256("700000001", size)
    assert recording_sha256("a", 100) != recording_sha256("b", 100)


def test_generated_seed_one_app_per_user() -> None:
    from rc_emulator.seed import DEFAULT_SEED, generated

    seed = generated(3)
    assert seed.apps[: len(DEFAULT_SEED.apps)] == DEFAULT_SEED.apps
    assert [a.client_id for a in seed.apps[-3:]] == ["gen-client-1", "gen-client-2",
                                                    "gen-client-3"]
    platform = Platform(seed)
    body = platform.token_request(
        {"grant_type": JWT_GRANT_URN, "assertion": "gen-jwt-2"},
        "Basic " + base64.b64encode(b"gen-client-2:gen-secret-2").decode())
    assert body["owner_id"] == "300002"
    with pytest.raises(SeedError, match="in the seed already"):
        generated(1, generated(1))


def test_large_seed_parses_in_linear_time() -> None:
    """Duplicate checks by set: 20,000 users parse in well under a second (the quadratic
    scans took 19 s for 10,000 and 105 s for 20,000)."""
    import time

    from rc_emulator.seed import parse_seed

    n = 20_000
    raw = {"apps": [{"client_id": f"c{i}", "client_secret": "s", "grants": ["jwt"]}
                    for i in range(n)],
           "users": [{"owner_id": str(i), "username": f"u{i}", "extension": "1",
                      "password": "p", "jwt": f"j{i}"} for i in range(n)]}
    started = time.perf_counter()
    seed = parse_seed(raw)
    assert len(seed.users) == n and len(seed.apps) == n
    assert time.perf_counter() - started < 5.0
    raw["users"].append(dict(raw["users"][7]))
    with pytest.raises(SeedError, match=r"users\[20000\].owner_id: duplicate"):
        parse_seed(raw)
