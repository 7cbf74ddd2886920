"""Issue 8: `tokenproxy check-config` and `tokenproxy revoke` as real subprocesses, against the
real emulator over HTTP, a real proxy process and real (encrypted SQLite) store files.

Sessions and token calls are counted by the emulator (`/_emulator/counters`): check-config's
test logins must leave the live-session count as they found it, `--offline` must make no call,
revoke must end the session on the platform and leave no usable pair in the store. No command
may print a secret: every test collects the secrets in play and asserts none is in the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from proxy_addon.cli.revoke import is_tombstone
from proxy_addon.config import StoreConfig
from proxy_addon.store import StoredTokens
from proxy_addon.store.factory import open_store
from proxy_addon.tokens.token_set import TokenSet
from tests.support.proxy import (
    APP_KEY,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_JWT,
    STORE_KEY,
    client,
    jwt_account,
    render_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
MAIN_PAIR = f"{DEMO_CLIENT_ID}/100001"
USER2_PAIR = f"{DEMO_CLIENT_ID}/100002"
PASSWORD = "demo-password-2"
SECRETS = [DEMO_CLIENT_SECRET, DEMO_JWT, PASSWORD, STORE_KEY, APP_KEY]

PASSWORD_ACCOUNT = {"name": "pw", "client_id": DEMO_CLIENT_ID,
                    "client_secret": DEMO_CLIENT_SECRET, "grant": "password",
                    "username": "+15550100002", "extension": "102", "password": PASSWORD}


def refresh_account(refresh_token: str, name: str = "rt", **extra: Any) -> dict[str, Any]:
    return {"name": name, "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
            "grant": "refresh_token", "refresh_token": refresh_token, **extra}


def write_config(tmp_path: Path, upstream: str, accounts: list[dict[str, Any]],
                 name: str = "cli", db: Path | None = None, **proxy: Any) -> Path:
    path = tmp_path / f"{name}.toml"
    options = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": upstream,
               "auth_budget_calls": 0, **proxy}
    store = {"backend": "sqlite", "path": str(db or tmp_path / f"{name}.db")}
    path.write_text(render_config(options, accounts, [client(account=accounts[0]["name"])],
                                  store))
    return path


def cli(*args: str, key: str = STORE_KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENPROXY_STORE_KEY": key}
    result = subprocess.run([sys.executable, "-m", "proxy_addon", *args], capture_output=True,
                            text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    print(f"$ tokenproxy {' '.join(args)} -> {result.returncode}\n{result.stdout}"
          f"{result.stderr}")
    return result


def assert_no_secret(result: subprocess.CompletedProcess[str], *extra: str) -> None:
    output = result.stdout + result.stderr
    for secret in [*SECRETS, *extra]:
        assert secret not in output, f"a secret was printed: {secret[:4]}…"


def line_of(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, result.stdout)
    return lines[0]


def live(emulator: Any, pair: str = MAIN_PAIR) -> int:
    return int(emulator.counters()["live_sessions"].get(pair, 0))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def store_call(db: Path, operation: str, *args: Any, key: str = STORE_KEY) -> Any:
    """Open the SQLite store file as the proxies do, run one operation, close it."""

    async def run() -> Any:
        store = open_store(StoreConfig(backend="sqlite", path=str(db)),
                           {"TOKENPROXY_STORE_KEY": key})
        await store.open()
        try:
            return await getattr(store, operation)(*args)
        finally:
            await store.close()

    return asyncio.run(run())


def seed_session(emulator: Any, db: Path, account: str, owner_id: str = "100002") -> TokenSet:
    """A real platform session (made by the emulator) saved as the account's stored pair."""
    body = emulator.outside_login_tokens(1, owner_id=owner_id)[0]
    tokens = TokenSet.from_response(json.dumps(body).encode(), time.time())
    assert store_call(db, "compare_and_set", account, 0, tokens)
    return tokens


# -- check-config ----------------------------------------------------------------------------


def test_check_config_good_credentials_cost_no_session(tmp_path: Path,
                                                       emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    refresh_token = emulator.user2_refresh_token()  # a seeded session of user 100002
    path = write_config(tmp_path, emulator.url,
                        [jwt_account(), PASSWORD_ACCOUNT, refresh_account(refresh_token)])
    before = emulator.counters()
    sessions = (live(emulator, MAIN_PAIR), live(emulator, USER2_PAIR))

    result = cli("check-config", "--config", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    after = emulator.counters()
    # two test logins (jwt, password), both revoked at once; one client probe; no refresh
    assert after["logins"] - before["logins"] == 2
    assert after["revocations"] - before["revocations"] == 2
    assert after["refreshes"] == before["refreshes"]
    assert after["token_calls"] - before["token_calls"] == 3
    assert (live(emulator, MAIN_PAIR), live(emulator, USER2_PAIR)) == sessions
    assert "revoked at once" in line_of(result, "OK   account main:")
    assert "revoked at once" in line_of(result, "OK   account pw:")
    assert "client_id/client_secret accepted" in line_of(result, "OK   account rt client:")
    assert "refresh_token" in line_of(result, "WARN account rt session:")  # none stored yet
    assert "answered" in line_of(result, "OK   upstream:")
    assert "does not exist yet" in line_of(result, "OK   store:")
    assert not (tmp_path / "cli.db").exists()  # a check creates no store file
    # the seeded refresh token was not spent: it still refreshes
    refreshed = httpx.post(emulator.url + "/restapi/oauth/token",
                           auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
                           data={"grant_type": "refresh_token", "refresh_token": refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    assert_no_secret(result, refresh_token)


def test_check_config_wrong_client_secret(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    wrong = "not-the-client-secret-4711"
    path = write_config(tmp_path, emulator.url,
                        [jwt_account(client_secret=wrong),
                         refresh_account("TPXR-never-used-4711", client_secret=wrong)])
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 1
    hint = "client_id/client_secret wrong for this server (sandbox vs production?)"
    assert "OAU-153" in line_of(result, "FAIL account main:")
    assert hint in line_of(result, "FAIL account main:")
    assert hint in line_of(result, "FAIL account rt client:")
    assert live(emulator) == 0 and emulator.counters()["logins"] == 0
    assert_no_secret(result, wrong, "TPXR-never-used-4711")


def test_check_config_wrong_jwt(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    forged = "forged-jwt-credential-0815"
    path = write_config(tmp_path, emulator.url, [jwt_account(jwt=forged)])
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 1
    line = line_of(result, "FAIL account main:")
    assert "OAU-140" in line and "JWT expired or revoked, or issued for another app" in line
    assert live(emulator) == 0
    assert_no_secret(result, forged)


def test_check_config_rate_limited(tmp_path: Path, emulator_factory) -> None:
    # counted per client id (the emulator's --auth-rate-key app variant), so another user's
    # call spends it too: the platform counts per (user, app), which other tests cover
    emulator = emulator_factory("--auth-rate", "1", "--auth-penalty", "30",
                                "--auth-rate-key", "app")
    emulator.user2_refresh_token()  # spends the app's one token call of the window
    path = write_config(tmp_path, emulator.url, [jwt_account()])
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 1
    line = line_of(result, "FAIL account main:")
    assert "429" in line and "rate limited (CMN-301): wait Retry-After" in line
    assert_no_secret(result)


def test_check_config_unreachable_upstream(tmp_path: Path) -> None:
    upstream = f"http://127.0.0.1:{closed_port()}"
    path = write_config(tmp_path, upstream, [jwt_account()])
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 1
    line = line_of(result, "FAIL upstream:")
    assert f"upstream unreachable: check [proxy] upstream ({upstream})" in line
    assert "upstream unreachable" in line_of(result, "SKIP account main:")
    assert "1 check(s) failed: upstream" in result.stderr
    assert_no_secret(result)


def test_check_config_store_key_mismatch_and_offline(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account()])
    db = tmp_path / "cli.db"
    seeded = seed_session(emulator, db, "main", owner_id="100001")
    before = emulator.counters()

    ok = cli("check-config", "--offline", "--config", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "opens with the key in TOKENPROXY_STORE_KEY" in line_of(ok, "OK   store:")
    assert "--offline" in line_of(ok, "SKIP upstream:")
    assert "generation 1" in line_of(ok, "OK   account main session:")

    other_key = Fernet.generate_key().decode()
    mismatch = cli("check-config", "--offline", "--config", str(path), key=other_key)
    assert mismatch.returncode == 1
    line = line_of(mismatch, "FAIL store:")
    assert "does not match" in line
    assert "TOKENPROXY_STORE_KEY must hold the key the store was written with" in line
    assert "store is not usable" in line_of(mismatch, "SKIP account main session:")

    after = emulator.counters()  # --offline: not a single call reached the platform
    assert after["token_calls"] == before["token_calls"]
    assert after["api_requests"] == before["api_requests"]

    # online, the stored session is tried with one API call (no token call for it)
    online = cli("check-config", "--config", str(path))
    assert online.returncode == 0, online.stdout
    assert "the platform accepts it (HTTP 200)" in line_of(online, "OK   account main session:")
    emulator.revoke_all()
    gone = cli("check-config", "--config", str(path))
    assert gone.returncode == 0, gone.stdout  # a jwt account logs in again by itself
    line = line_of(gone, "OK   account main session:")
    assert "no longer knows the session (OAU-213" in line and "logs in again" in line
    assert emulator.counters()["refreshes"] == 0
    for result in (ok, online, gone):
        assert_no_secret(result, seeded.access_token, seeded.refresh_token or "")
    assert_no_secret(mismatch, other_key)


def test_check_config_ports(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        path = write_config(tmp_path, "http://127.0.0.1:9", [jwt_account()],
                            metrics_listen=f"127.0.0.1:{port}")
        result = cli("check-config", "--offline", "--config", str(path))
    assert result.returncode == 1
    assert "in use by another program" in line_of(result, "FAIL metrics_listen:")
    assert "port 0" in line_of(result, "OK   listen:")


# -- revoke ----------------------------------------------------------------------------------


def test_revoke_logs_the_running_proxy_out(tmp_path: Path, emulator_factory,
                                           proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url)
    db = proxy.config_path.with_suffix(".db")
    with proxy.http() as app:
        assert app.get(EXT).status_code == 200
    assert live(emulator) == 1
    stored = store_call(db, "load", "main")
    assert isinstance(stored, StoredTokens) and stored.generation == 1
    tokens = [stored.tokens.access_token, stored.tokens.refresh_token or ""]

    # check-config beside the running proxy: its ports are "in use by a running tokenproxy"
    # and it reads the stored session the proxy wrote
    admin = httpx.URL(proxy.admin_url or "")
    beside = write_config(tmp_path, emulator.url, [jwt_account()], name="beside", db=db,
                          listen=proxy.url.removeprefix("http://"),
                          metrics_listen=f"{admin.host}:{admin.port}")
    calls = emulator.counters()["token_calls"]
    checked = cli("check-config", "--offline", "--config", str(beside))
    assert checked.returncode == 0, checked.stdout
    assert "running tokenproxy" in line_of(checked, "OK   listen:")
    assert "running tokenproxy (accounts: main)" in line_of(checked, "OK   metrics_listen:")
    assert "generation 1" in line_of(checked, "OK   account main session:")
    assert emulator.counters()["token_calls"] == calls

    revocations = emulator.counters()["revocations"]
    result = cli("revoke", "main", "--config", str(proxy.config_path), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "revoked on the platform" in result.stdout
    assert "cleared from the store" in result.stdout and "log in again" in result.stdout
    assert emulator.counters()["revocations"] == revocations + 1
    assert live(emulator) == 0  # the platform shows the session ended
    after = store_call(db, "load", "main")
    assert after.generation == 2 and is_tombstone(after.tokens)  # no pair left
    assert not after.tokens.access_alive(time.time())
    assert_no_secret(result, *tokens)

    # the running proxy meets OAU-213 and logs in again by itself (jwt grant)
    with proxy.http() as app:
        assert app.get(EXT).status_code == 200
    assert live(emulator) == 1
    relogged = store_call(db, "load", "main")
    assert relogged.generation == 3 and not is_tombstone(relogged.tokens)


def test_revoke_refresh_token_account_needs_authorize(tmp_path: Path,
                                                      emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [refresh_account("TPXR-spent-long-ago")])
    db = tmp_path / "cli.db"
    tokens = seed_session(emulator, db, "rt")
    assert live(emulator, USER2_PAIR) == 1
    secrets = [tokens.access_token, tokens.refresh_token or ""]

    result = cli("revoke", "rt", "--config", str(path), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tokenproxy authorize rt" in result.stdout and "TPX-REAUTH-REQUIRED" in result.stdout
    assert live(emulator, USER2_PAIR) == 0
    assert is_tombstone(store_call(db, "load", "rt").tokens)
    assert_no_secret(result, *secrets)

    # check-config reports what is left: a revoked session that needs a person
    checked = cli("check-config", "--offline", "--config", str(path))
    assert checked.returncode == 1
    line = line_of(checked, "FAIL account rt session:")
    assert "revoked by `tokenproxy revoke`" in line and "tokenproxy authorize rt" in line

    again = cli("revoke", "rt", "--config", str(path), "--yes")
    assert again.returncode == 0 and "nothing to revoke" in again.stdout
    assert store_call(db, "generation", "rt") == 2  # nothing written


def test_revoke_failures_and_bad_input(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}", [jwt_account()])
    db = tmp_path / "cli.db"
    tokens = seed_session(emulator, db, "main", owner_id="100001")

    unknown = cli("revoke", "nobody", "--config", str(path), "--yes")
    assert unknown.returncode == 2 and "accounts: main" in unknown.stderr

    unconfirmed = cli("revoke", "main", "--config", str(path))  # stdin is not a terminal
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr

    unreachable = cli("revoke", "main", "--config", str(path), "--yes")
    assert unreachable.returncode == 1
    assert "upstream unreachable: check [proxy] upstream" in unreachable.stderr
    kept = store_call(db, "load", "main")  # the platform was not told: the store keeps it
    assert kept.generation == 1 and kept.tokens.access_token == tokens.access_token
    assert live(emulator) == 1

    wrong_key = Fernet.generate_key().decode()
    mismatch = cli("revoke", "main", "--config", str(path), "--yes", key=wrong_key)
    assert mismatch.returncode == 1 and "TOKENPROXY_STORE_KEY" in mismatch.stderr
    for result in (unknown, unconfirmed, unreachable):
        assert_no_secret(result, tokens.access_token, tokens.refresh_token or "")
    assert_no_secret(mismatch, wrong_key)


def test_revoke_virtual_lists_and_ends_an_accounts_or_a_client_ids_grants(
        tmp_path: Path, emulator_factory) -> None:
    """`tokenproxy revoke --virtual ACCOUNT|CLIENT_ID` lists the virtual grants (apps' logins
    through the proxy) from the store's index and ends them; `--list` ends nothing; the
    account's own platform session is left alone; no token is printed."""
    from tests.support.proxy import start_proxy_with_config

    emulator = emulator_factory("--auth-rate", "0")
    path = write_config(tmp_path, emulator.url, [jwt_account(), PASSWORD_ACCOUNT])
    proxy = start_proxy_with_config(path, env={"TOKENPROXY_STORE_KEY": STORE_KEY})

    def login(**form: str) -> dict[str, Any]:
        answer = httpx.post(proxy.url + "/restapi/oauth/token", data=form, timeout=30,
                            auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def status(token: str, want: int) -> int:
        code = 0
        for _ in range(100):  # bounded: proxies honour an ended grant within their 5 s cache
            code = httpx.get(proxy.url + EXT, headers={"Authorization": f"Bearer {token}"},
                             timeout=30).status_code
            if code == want:
                break
            time.sleep(0.1)
        return code

    jwt_form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": DEMO_JWT}
    try:
        mains = [login(**jwt_form), login(**jwt_form)]
        pw = login(grant_type="password", username="+15550100002", password=PASSWORD)
        tokens = [t[k] for t in (*mains, pw) for k in ("access_token", "refresh_token")]
        listed = cli("revoke", "--virtual", "main", "--list", "--config", str(path))
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "2 virtual grant(s) of account main:" in listed.stdout
        assert listed.stdout.count("  grant ") == 2 and "client demo-client-id" in listed.stdout
        assert status(mains[0]["access_token"], 200) == 200  # --list ends nothing
        asked = cli("revoke", "--virtual", "main", "--config", str(path))
        assert asked.returncode == 2 and "pass --yes" in asked.stderr

        revocations = emulator.counters()["revocations"]
        ended = cli("revoke", "--virtual", "main", "--config", str(path), "--yes")
        assert ended.returncode == 0, ended.stdout + ended.stderr
        assert "ended 2 virtual grant(s)" in ended.stdout
        for grant in mains:
            assert status(grant["access_token"], 401) == 401
        assert status(pw["access_token"], 200) == 200  # another account's grant
        assert emulator.counters()["revocations"] == revocations  # the session stays
        none_left = cli("revoke", "--virtual", "main", "--list", "--config", str(path))
        assert "0 virtual grant(s) of account main." in none_left.stdout

        by_client = cli("revoke", "--virtual", DEMO_CLIENT_ID, "--config", str(path), "--yes")
        assert by_client.returncode == 0, by_client.stdout + by_client.stderr
        assert f"1 virtual grant(s) of client id {DEMO_CLIENT_ID}:" in by_client.stdout
        assert "account pw" in by_client.stdout
        assert status(pw["access_token"], 401) == 401
        for result in (listed, ended, by_client):
            assert_no_secret(result, *tokens)

        unknown = cli("revoke", "--virtual", "nobody", "--config", str(path))
        assert unknown.returncode == 2 and "neither an account nor a client id" in unknown.stderr
        assert cli("revoke", "main", "--list", "--config", str(path)).returncode == 2
    finally:
        proxy.stop()


def test_a_reader_that_leaves_early_is_not_an_error() -> None:
    """`tokenproxy status | head`: the pipe closes before the output is written; no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "proxy_addon", "client-key"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == "", done.stderr
