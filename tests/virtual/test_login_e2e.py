"""Login interception: apps log in through the proxy with their own credentials and get virtual
tokens in the platform's shapes; the platform sees only the proxy's one session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
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
                 account_of_key: str, **proxy: object) -> Path:
    """A proxy config with its own SQLite store and one static client key."""
    path = tmp_path / "login.toml"
    path.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
         "auth_budget_calls": 0, **proxy},
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
            # a wrong client is answered like wrong credentials (which half: never said)
            "wrong secret": (login(proxy.url, grant_type=JWT_GRANT, assertion=DEMO_JWT,
                                   client_secret="nope"), 400, "OAU-140"),
            "unknown client": (login(proxy.url, grant_type=JWT_GRANT, assertion=DEMO_JWT,
                                     client_id="someone-else"), 400, "OAU-140"),
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
    app = Path(__file__).parents[1] / "sdk" / "login_loop_app.py"
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


def from_address(url: str, source: str, **form: str) -> httpx.Response:
    """A login from another loopback source address (127.0.0.0/8 is all ours)."""
    auth = (form.pop("client_id", DEMO_CLIENT_ID), form.pop("client_secret", DEMO_CLIENT_SECRET))
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as c:
        return c.post(url + "/restapi/oauth/token", data=form, auth=auth)


def code_of(response: httpx.Response) -> str:
    return response.json()["errors"][0]["errorCode"]


def test_failed_logins_are_throttled_per_address_and_per_client_id(
        tmp_path: Path, emulator_factory) -> None:
    """Failed logins count per source address (bad_key_limit) and per client id
    (login_failure_limit): beyond either, logins get the platform's 429 CMN-301 with
    Retry-After without any credential being checked. Refreshes are not locked per client."""
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account()], "main", bad_key_limit=3,
                        login_failure_limit=5)
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    wrong = {"grant_type": JWT_GRANT, "assertion": "guess"}
    right = {"grant_type": JWT_GRANT, "assertion": DEMO_JWT}
    try:
        for _ in range(3):
            assert from_address(proxy.url, "127.0.0.2", **wrong).status_code == 400
        locked = from_address(proxy.url, "127.0.0.2", **right)  # even the right JWT
        assert locked.status_code == 429, locked.text
        assert locked.json()["errorCode"] == "CMN-301" and int(locked.headers["retry-after"]) > 0
        good = from_address(proxy.url, "127.0.0.3", **right)  # other addresses are not slowed
        assert good.status_code == 200, good.text
        for _ in range(2):  # 3 + 2 failures of this client id, from two addresses
            assert from_address(proxy.url, "127.0.0.4", **wrong).status_code == 400
        client_locked = from_address(proxy.url, "127.0.0.5", **right)
        assert client_locked.status_code == 429 and client_locked.json()["errorCode"] == \
            "CMN-301", client_locked.text
        refreshed = from_address(proxy.url, "127.0.0.5", grant_type="refresh_token",
                                 refresh_token=good.json()["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text  # apps already in keep going
    finally:
        proxy.stop()


def test_wrong_client_secret_and_wrong_credentials_get_the_same_answer(config) -> None:
    """Without the client secret proven, nobody learns which half was wrong: a wrong secret
    (with the right or a wrong JWT), an unknown client id and a wrong JWT all get one answer."""
    path, _ = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        answers = {
            "wrong secret, right jwt": login(proxy.url, grant_type=JWT_GRANT,
                                             assertion=DEMO_JWT, client_secret="nope"),
            "wrong secret, wrong jwt": login(proxy.url, grant_type=JWT_GRANT,
                                             assertion="forged", client_secret="nope"),
            "unknown client": login(proxy.url, grant_type=JWT_GRANT, assertion=DEMO_JWT,
                                    client_id="someone-else"),
            "right secret, wrong jwt": login(proxy.url, grant_type=JWT_GRANT,
                                             assertion="forged"),
            "wrong password": login(proxy.url, grant_type="password", username="+15550100002",
                                    password="guess", client_secret="nope"),
        }
        seen = {(r.status_code, r.content) for r in answers.values()}
        assert len(seen) == 1, {name: (r.status_code, r.text) for name, r in answers.items()}
    finally:
        proxy.stop()


def test_expired_virtual_access_token_answers_oau_210(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account()], "main", virtual_access_ttl=1)
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        body = jwt_login(proxy.url).json()
        assert body["expires_in"] == 1
        answer = api(proxy.url, body["access_token"])
        for _ in range(100):  # bounded: the token lives 1 s
            if answer.status_code == 401:
                break
            time.sleep(0.1)
            answer = api(proxy.url, body["access_token"])
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["errorCode"] == "OAU-210", answer.text
        renewed = login(proxy.url, grant_type="refresh_token",
                        refresh_token=body["refresh_token"])
        assert renewed.status_code == 200, renewed.text  # the refresh token still lives
    finally:
        proxy.stop()


def test_revoke_needs_the_client_credentials(config) -> None:
    """POST /restapi/oauth/revoke authenticates the client like the platform (Basic
    client_id:secret): without it, or with a wrong secret, nothing is revoked."""
    path, _ = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        token = jwt_login(proxy.url).json()["access_token"]
        bare = httpx.post(proxy.url + "/restapi/oauth/revoke", data={"token": token}, timeout=30)
        assert bare.status_code == 401 and code_of(bare) == "OAU-153", bare.text
        wrong = httpx.post(proxy.url + "/restapi/oauth/revoke", data={"token": token},
                           auth=(DEMO_CLIENT_ID, "nope"), timeout=30)
        assert wrong.status_code == 401, wrong.text
        assert api(proxy.url, token).status_code == 200  # still alive
        done = httpx.post(proxy.url + "/restapi/oauth/revoke", data={"token": token},
                          auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), timeout=30)
        assert done.status_code == 200
        assert api(proxy.url, token).status_code == 401
    finally:
        proxy.stop()


def test_post_authorize_is_not_a_revoke(config) -> None:
    path, _ = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        token = jwt_login(proxy.url).json()["access_token"]
        post = httpx.post(proxy.url + "/restapi/oauth/authorize", data={"token": token},
                          auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), timeout=30)
        assert post.status_code == 405, post.text
        assert post.json()["error"] == "invalid_request" and post.headers["allow"] == "GET"
        assert api(proxy.url, token).status_code == 200
    finally:
        proxy.stop()


def test_one_refresh_token_spent_twice_at_once_and_reuse_revokes_the_lineage(config) -> None:
    """Two apps refresh with one virtual refresh token at once: exactly one gets a pair; the
    other is a reuse, which ends the whole lineage (the winner's new pair too). A reuse later
    on does the same."""
    path, _ = config
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        first = jwt_login(proxy.url).json()
        results: list[httpx.Response] = []
        start = threading.Barrier(2)

        def refresh() -> None:
            start.wait(timeout=10)
            results.append(login(proxy.url, grant_type="refresh_token",
                                 refresh_token=first["refresh_token"]))

        threads = [threading.Thread(target=refresh) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(r.status_code for r in results) == [200, 400], [r.text for r in results]
        won = next(r for r in results if r.status_code == 200).json()
        assert api(proxy.url, won["access_token"]).status_code == 401  # lineage revoked
        again = login(proxy.url, grant_type="refresh_token", refresh_token=won["refresh_token"])
        assert again.status_code == 400

        # sequential reuse: rotate, then present the spent token again
        second = jwt_login(proxy.url).json()
        rotated = login(proxy.url, grant_type="refresh_token",
                        refresh_token=second["refresh_token"]).json()
        assert api(proxy.url, rotated["access_token"]).status_code == 200
        reuse = login(proxy.url, grant_type="refresh_token",
                      refresh_token=second["refresh_token"])
        assert reuse.status_code == 400 and code_of(reuse) == "OAU-211"
        assert api(proxy.url, rotated["access_token"]).status_code == 401
        assert login(proxy.url, grant_type="refresh_token",
                     refresh_token=rotated["refresh_token"]).status_code == 400
    finally:
        proxy.stop()


def test_revoke_account_and_a_credential_change_end_its_virtual_grants(
        tmp_path: Path, emulator_factory) -> None:
    """`tokenproxy revoke ACCOUNT` ends every virtual grant of the account; so does a change of
    the account's credentials in the config (the grant was bound to the old ones)."""
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account()], "main")
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY}
    proxy = start_proxy_with_config(path, env=env)
    try:
        token = jwt_login(proxy.url).json()["access_token"]
        assert api(proxy.url, token).status_code == 200
        revoked = subprocess.run([sys.executable, "-m", "proxy_addon", "revoke", "main",
                                  "--config", str(path), "--yes"], capture_output=True,
                                 text=True, timeout=60, env={**os.environ, **env})
        assert revoked.returncode == 0, revoked.stderr
        answer = api(proxy.url, token)
        for _ in range(100):  # bounded: replicas honour it within the 5 s cache
            if answer.status_code == 401:
                break
            time.sleep(0.1)
            answer = api(proxy.url, token)
        assert answer.status_code == 401 and code_of(answer) == "OAU-213", answer.text
        kept = jwt_login(proxy.url).json()["access_token"]  # a new login works again
        assert api(proxy.url, kept).status_code == 200
    finally:
        proxy.stop()
    # the account's JWT changes in the config: grants made with the old one end
    path.write_text(path.read_text().replace(DEMO_JWT, DEMO_JWT + "-rotated"))
    proxy = start_proxy_with_config(path, env=env)
    try:
        answer = api(proxy.url, kept)
        assert answer.status_code == 401 and code_of(answer) == "OAU-213", answer.text
    finally:
        proxy.stop()


def test_outstanding_virtual_grants_are_capped_per_account(tmp_path: Path,
                                                           emulator_factory) -> None:
    """[proxy] virtual_grants_per_account: beyond it a login ends the account's grant that was
    refreshed least recently (a login loop cannot grow the store without bound)."""
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account()], "main",
                        virtual_grants_per_account=2)
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        first, second = jwt_login(proxy.url).json(), jwt_login(proxy.url).json()
        third = jwt_login(proxy.url).json()
        assert api(proxy.url, first["access_token"]).status_code == 401  # the oldest ended
        evicted = login(proxy.url, grant_type="refresh_token",
                        refresh_token=first["refresh_token"])
        assert evicted.status_code == 400, evicted.text
        assert api(proxy.url, third["access_token"]).status_code == 200
        refreshed = login(proxy.url, grant_type="refresh_token",
                          refresh_token=second["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text  # now the most recently used
        fourth = jwt_login(proxy.url).json()
        assert api(proxy.url, third["access_token"]).status_code == 401
        for kept in (refreshed.json(), fourth):
            assert api(proxy.url, kept["access_token"]).status_code == 200
    finally:
        proxy.stop()
