"""Login interception: apps log in through the proxy with their own credentials and get virtual
tokens in the platform's shapes; the platform sees only the proxy's one session."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    STORE_KEY,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PASSWORD_ACCOUNT = {"name": "pw", "client_id": DEMO_CLIENT_ID,
                    "client_secret": DEMO_CLIENT_SECRET, "grant": "password",
                    "username": "+15550100002", "extension": "102",
                    "password": "demo-password-2"}
KEY = "login-app-key-0123456789"


def login(url: str, **form: str) -> httpx.Response:
    return httpx.post(url + "/restapi/oauth/token", data=form, timeout=30,
                      auth=(form.pop("client_id", DEMO_CLIENT_ID),
                            form.pop("client_secret", DEMO_CLIENT_SECRET)))


def jwt_login(url: str, **extra: str) -> httpx.Response:
    return login(url, grant_type=JWT_GRANT, assertion=DEMO_JWT, **extra)


def api(url: str, token: str, path: str = EXT) -> httpx.Response:
    return httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def write_config(tmp_path: Path, upstream: str, accounts: list[dict],
                 account_of_key: str) -> Path:
    """A proxy config with its own SQLite store and one static client key."""
    path = tmp_path / "login.toml"
    path.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
         "auth_budget_calls": 0},
        accounts, [{"name": "app", "account": account_of_key, "key": KEY}],
        {"path": str(tmp_path / "login.db")}))
    return path


@pytest.fixture
def config(tmp_path: Path, emulator_factory) -> tuple[Path, object]:
    emulator = emulator_factory("--auth-rate", "0")
    return write_config(tmp_path, emulator.url, [jwt_account(), PASSWORD_ACCOUNT], "main"), \
        emulator


def test_logins_refresh_revoke_and_errors(config) -> None:
    path, emulator = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        first = jwt_login(proxy.url)
        assert first.status_code == 200, first.text
        body = first.json()
        assert set(body) >= {"access_token", "token_type", "expires_in", "refresh_token",
                             "refresh_token_expires_in", "scope", "owner_id"}
        assert body["token_type"] == "bearer" and body["owner_id"] == "100001"
        assert api(proxy.url, body["access_token"]).json()["id"] == 100001
        # password grant maps to the other account (user 100002)
        pw = login(proxy.url, grant_type="password", username="+15550100002",
                   extension="102", password="demo-password-2").json()
        assert api(proxy.url, pw["access_token"]).json()["id"] == 100002
        # a second app's login: its own virtual pair, same account
        second = jwt_login(proxy.url).json()
        assert second["access_token"] != body["access_token"]

        # refresh rotates the virtual pair; the old access and refresh tokens die
        refreshed = login(proxy.url, grant_type="refresh_token",
                          refresh_token=body["refresh_token"])
        assert refreshed.status_code == 200
        new = refreshed.json()
        assert api(proxy.url, new["access_token"]).status_code == 200
        old = api(proxy.url, body["access_token"])
        assert old.status_code == 401
        assert old.json()["errors"][0]["errorCode"] == "OAU-213"
        again = login(proxy.url, grant_type="refresh_token", refresh_token=body["refresh_token"])
        assert again.status_code == 400 and again.json()["errors"][0]["errorCode"] == "OAU-211"

        # revoking one app's token revokes only that app's pair
        revoke = httpx.post(proxy.url + "/restapi/oauth/revoke",
                            data={"token": new["access_token"]}, timeout=30,
                            auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        assert revoke.status_code == 200
        assert api(proxy.url, new["access_token"]).status_code == 401
        assert api(proxy.url, second["access_token"]).status_code == 200
        with proxy.http(KEY) as client:  # static client keys keep working beside logins
            assert client.get(EXT).status_code == 200

        # wrong input gets the platform's own error bodies
        cases = {
            "wrong secret": (login(proxy.url, grant_type=JWT_GRANT, assertion=DEMO_JWT,
                                   client_secret="nope"), 401, "OAU-153"),
            "unknown client": (login(proxy.url, grant_type=JWT_GRANT, assertion=DEMO_JWT,
                                     client_id="someone-else"), 401, "OAU-153"),
            "wrong jwt": (login(proxy.url, grant_type=JWT_GRANT, assertion="forged"), 400,
                          "OAU-140"),
            "wrong password": (login(proxy.url, grant_type="password",
                                     username="+15550100002", password="guess"), 400,
                               "OAU-140"),
            "no grant": (login(proxy.url), 400, "OAU-101"),
            "unknown refresh": (login(proxy.url, grant_type="refresh_token",
                                      refresh_token="TPXR" + "x" * 43), 400, "OAU-211"),
            "other grant": (login(proxy.url, grant_type="client_credentials"), 400, "OAU-250"),
        }
        for name, (response, status, code) in cases.items():
            assert response.status_code == status, (name, response.text)
            assert response.json()["errors"][0]["errorCode"] == code, name
        unknown = api(proxy.url, "TPXA" + "y" * 43)
        assert unknown.status_code == 401 and unknown.json()["errorCode"] == "TokenInvalid"
    finally:
        proxy.stop()
    counters = emulator.counters()
    # the platform saw the proxy's own sessions only: one per account, no matter the logins
    assert counters["logins"] == 2, counters
    for secret in (DEMO_JWT, DEMO_CLIENT_SECRET, "demo-password-2", body["access_token"],
                   body["refresh_token"]):
        assert secret not in proxy.logs()


def test_virtual_tokens_survive_restart_and_work_on_every_replica(config) -> None:
    path, _ = config
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY}
    a = start_proxy_with_config(path, env=env)
    b = start_proxy_with_config(path, env=env)
    try:
        token = jwt_login(a.url).json()["access_token"]
        assert api(b.url, token).status_code == 200  # issued by a, honoured by b
        a.stop()
        a = start_proxy_with_config(path, env=env)
        assert api(a.url, token).status_code == 200  # and after a restart
    finally:
        a.stop()
        b.stop()


@pytest.mark.timeout(200)
def test_twenty_apps_logging_in_every_two_seconds(config) -> None:
    """20 app processes each logging in every 2 s for 60 s: the emulator sees at most 2
    sessions and 5 token calls a minute from the proxy."""
    path, emulator = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    app = Path(__file__).parent / "sdk" / "login_loop_app.py"
    try:
        apps = [subprocess.Popen([sys.executable, str(app), proxy.url, DEMO_CLIENT_ID,
                                  DEMO_CLIENT_SECRET, DEMO_JWT, "60"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(20)]
        results = [p.communicate(timeout=150) for p in apps]
    finally:
        proxy.stop()
    outcomes = Counter()
    for (out, err), process in zip(results, apps, strict=True):
        assert process.returncode == 0, (out, err[-2000:])
        fields = dict(part.split("=") for part in out.split())
        outcomes["ok"] += int(fields["ok"])
        outcomes["failed"] += int(fields["failed"])
    counters = emulator.counters()
    print(f"figures logins: 20 processes, {dict(outcomes)} platform "
          f"token_calls={counters['token_calls']} sessions={counters['max_live_sessions_proxy']}")
    assert outcomes["failed"] == 0 and outcomes["ok"] >= 20 * 25
    assert counters["token_calls"] <= 5
    assert max(counters["max_live_sessions_proxy"].values()) <= 2


def test_authorization_code_login_reauthorizes_an_account(tmp_path: Path,
                                                          emulator_factory) -> None:
    """An app's authorization-code login through the proxy: the browser goes to the platform's
    page; the code is exchanged by the proxy. An account waiting for a person gets that
    session; an account that has one keeps it (the new one is revoked at once)."""
    emulator = emulator_factory("--auth-rate", "0")
    seeded = {"name": "seeded", "client_id": DEMO_CLIENT_ID,
              "client_secret": DEMO_CLIENT_SECRET, "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token()}
    path = write_config(tmp_path, emulator.url, [jwt_account(), seeded], "seeded")
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    redirect = "http://127.0.0.1:9/callback"

    def code_for(user: str) -> str:
        step = httpx.get(proxy.url + "/restapi/oauth/authorize", timeout=30, params={
            "response_type": "code", "client_id": DEMO_CLIENT_ID, "redirect_uri": redirect,
            "login_hint": user})
        assert step.status_code == 302 and step.headers["location"].startswith(emulator.url)
        back = httpx.get(step.headers["location"], timeout=30)  # the platform's page
        assert back.status_code == 302
        return dict(httpx.URL(back.headers["location"]).params)["code"]

    try:
        with proxy.http(KEY) as client:
            assert client.get(EXT).status_code == 200  # seeded works ...
            emulator.revoke_all()
            dead = client.get(EXT)  # ... until its session is revoked: needs a person
            assert dead.json()["errorCode"] == "TPX-REAUTH-REQUIRED"
            login_ = login(proxy.url, grant_type="authorization_code",
                           code=code_for("+15550100002"), redirect_uri=redirect)
            assert login_.status_code == 200, login_.text
            assert api(proxy.url, login_.json()["access_token"]).json()["id"] == 100002
            assert client.get(EXT).status_code == 200  # the account serves again
            assert proxy.account_status("seeded")["state"] == "healthy"
            # main has its session: a code login for its user gets virtual tokens, and the
            # session the exchange created is revoked at once
            main_login = login(proxy.url, grant_type="authorization_code",
                               code=code_for("+15550100001"), redirect_uri=redirect)
            assert main_login.status_code == 200, main_login.text
            assert api(proxy.url, main_login.json()["access_token"]).json()["id"] == 100001
            bad = login(proxy.url, grant_type="authorization_code", code="nope",
                        redirect_uri=redirect)
            assert bad.status_code == 400
    finally:
        proxy.stop()
    by_owner = Counter(s["owner_id"] for s in emulator.sessions() if not s["outside"])
    assert by_owner == {"100001": 1, "100002": 1}, by_owner
