"""Hot reload under load (issue 19, item 1): 10 reloads of a running 2-worker proxy — SIGHUP and
``tokenproxy reload`` — adding and removing a client, rotating its key with overlap, giving it an
allow list and taking it back, changing a weight, two broken files and a restart-only change —
while 20 apps of another client keep calling. Every app request succeeds, no platform session is
created, each change is in force on both workers within 1 s, and a broken file changes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config

EXT = "/restapi/v1.0/account/~/extension/~"
STABLE = "stable-app-key-0123456789"
KEY_B, KEY_B2 = "client-b-key-0123456789", "client-b-key2-0123456789"
SMS = {"from": {"phoneNumber": "+15550100001"}, "to": [{"phoneNumber": "+15550109999"}],
       "text": "reload"}


def status_of(url: str, key: str, method: str = "GET") -> int:
    """A new connection each time: SO_REUSEPORT gives it to either worker."""
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        return (c.post(EXT + "/sms", json=SMS) if method == "POST" else c.get(EXT)).status_code


def reloadable(tmp_path: Path, name: str, upstream: str
               ) -> tuple[Path, dict[str, object], dict[str, object]]:
    """A config file to write and reload, the ``[proxy]`` table of a proxy on ``upstream``
    (no admin listener, no token-call budget: tests renew often) and a SQLite ``[store]``."""
    proxy = {"listen": "127.0.0.1:0", "metrics_listen": "", "upstream": upstream,
             "auth_budget_calls": 0}
    return (tmp_path / f"{name}.toml", proxy,
            {"backend": "sqlite", "path": str(tmp_path / "tokens.db")})


class AppsCalling:
    """20 apps calling ``EXT`` with ``key`` every 50 ms on one keep-alive connection each,
    their answers counted by status (or exception name) until :meth:`stop`."""

    def __init__(self, url: str, key: str, apps: int = 20) -> None:
        self.statuses: Counter = Counter()
        self._url, self._key = url, key
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._app) for _ in range(apps)]
        for thread in self._threads:
            thread.start()

    def _app(self) -> None:
        with httpx.Client(base_url=self._url, timeout=30,
                          headers={"Authorization": f"Bearer {self._key}"}) as client:
            for _ in range(5000):  # bounded
                if self._stop.is_set():
                    return
                try:
                    self.statuses[client.get(EXT).status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[exc.__class__.__name__] += 1
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def settled(statuses: Counter, emulator) -> None:
    """The apps have been served for a while (every worker's first token call is behind us,
    even on a loaded machine): from now on, any platform login is one a reload caused."""
    deadline = time.monotonic() + 60
    while statuses[200] < 100 and time.monotonic() < deadline:  # bounded
        time.sleep(0.1)
    assert statuses[200] >= 100 and emulator.counters()["logins"] >= 1, statuses


def in_force(url: str, key: str, expected: int, method: str = "GET") -> float:
    """Seconds from the reload until the first of 6 requests in a row (either worker, new
    connections) that all answer ``expected``; at most 5 s."""
    started = time.monotonic()
    streak, first = 0, 0.0
    while time.monotonic() - started < 5:  # bounded
        sent = time.monotonic()
        if status_of(url, key, method) == expected:
            streak, first = streak + 1, first if streak else sent - started
        else:
            streak = 0
        if streak >= 6:
            return first
    raise AssertionError(f"{method} with {key[:8]}… never answered {expected} 6 times in a row")


@pytest.mark.timeout(300)
def test_ten_reloads_under_load(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    config, proxy_table, store = reloadable(tmp_path, "reload", emulator.url)
    stable = {"name": "stable", "account": "main", "key": STABLE}

    def write(*clients: dict, proxy: dict | None = None) -> None:
        config.write_text(render_config(proxy or proxy_table, [jwt_account()],
                                        [stable, *clients], store, {"mode": "observe"}))

    write()
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    url = proxy.url
    load = AppsCalling(url, STABLE)
    statuses = load.statuses

    def sighup() -> None:
        proxy.proc.send_signal(signal.SIGHUP)

    def cli_reload() -> None:
        done = subprocess.run([sys.executable, "-m", "proxy_addon", "reload", "--config",
                               str(config)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "signalled 1 process" in done.stdout, done

    took: list[float] = []
    try:
        settled(statuses, emulator)
        logins = emulator.counters()["logins"]
        b = {"name": "b", "account": "main", "key": KEY_B}
        write(b); sighup()  # noqa: E702 - 1: a new client
        took.append(in_force(url, KEY_B, 200))
        write({**b, "keys": [KEY_B2]}); cli_reload()  # noqa: E702 - 2: rotation, both keys
        took.append(in_force(url, KEY_B2, 200))
        assert status_of(url, KEY_B, "GET") == 200
        rotated = {"name": "b", "account": "main", "keys": [KEY_B2]}
        write(rotated); sighup()  # noqa: E702 - 3: the old key goes
        took.append(in_force(url, KEY_B, 401))
        scoped = {**rotated, "allow": [f"GET {EXT}"]}
        write(scoped); cli_reload()  # noqa: E702 - 4: an allow list
        took.append(in_force(url, KEY_B2, 403, "POST"))
        config.write_text("[proxy\nbroken = ")  # 5: not TOML
        sighup()
        time.sleep(1.0)
        assert status_of(url, KEY_B2, "POST") == 403 and status_of(url, KEY_B2) == 200
        write({**scoped, "account": "nobody"})  # 6: a client of an account not running
        done = subprocess.run([sys.executable, "-m", "proxy_addon", "reload", "--config",
                               str(config)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and "nobody" in done.stderr  # checked before signalling
        sighup()
        time.sleep(1.0)
        assert status_of(url, KEY_B2, "POST") == 403
        stable["rate_weight"] = 2.0
        write(scoped); sighup()  # noqa: E702 - 7: a weight
        time.sleep(0.5)
        write(rotated); cli_reload()  # noqa: E702 - 8: the allow list goes
        took.append(in_force(url, KEY_B2, 200, "POST"))
        write(); sighup()  # noqa: E702 - 9: the client goes
        took.append(in_force(url, KEY_B2, 401))
        write(proxy={**proxy_table, "token_wait_timeout": 20.0})  # 10: needs a restart
        sighup()
        time.sleep(1.0)
        new_logins = emulator.counters()["logins"] - logins
    finally:
        load.stop()
        proxy.stop()
    log = proxy.logs()
    applied, refused = log.count("config reloaded from"), log.count("config reload refused")
    print(f"figures reload: {sum(statuses.values())} app requests {dict(statuses)}; changes in "
          f"force after {[round(t, 2) for t in took]} s; reload log lines: {applied} applied, "
          f"{refused} refused (2 workers); new platform logins {new_logins}")
    assert set(statuses) == {200}, statuses
    assert new_logins == 0
    assert max(took) < 1.0  # in force on both workers within 1 s, and staying so
    assert applied == 2 * 8 and refused == 2 * 2
    assert "needs a restart to change: [proxy]" in log
    assert KEY_B not in log and KEY_B2 not in log and STABLE not in log


@pytest.mark.timeout(120)
def test_a_reload_changes_a_clients_rate_quota_within_a_second(tmp_path: Path,
                                                               emulator_factory) -> None:
    """Limits change with a reload too: a client capped at 2 Light calls a window gets the
    proxy's 429; raised to 40 it is served within 1 s, lowered to 2 again refused within 1 s,
    the cap removed served again within 1 s (a removed quota once stayed in force until a
    restart)."""
    emulator = emulator_factory("--auth-rate", "0")
    config, proxy_table, store = reloadable(tmp_path, "quota", emulator.url)
    quota_key = "quota-app-key-0123456789"

    def write(**extra: object) -> None:
        capped = {"name": "capped", "account": "main", "key": quota_key, **extra}
        config.write_text(render_config(proxy_table, [jwt_account()], [capped], store,
                                        {"mode": "enforce", "max_wait": 0.2}))

    write(rate_quota={"Light": 2})
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        first = [status_of(proxy.url, quota_key) for _ in range(3)]
        assert first == [200, 200, 429], first
        write(rate_quota={"Light": 40})
        proxy.proc.send_signal(signal.SIGHUP)
        took = [in_force(proxy.url, quota_key, 200)]
        write(rate_quota={"Light": 2})
        proxy.proc.send_signal(signal.SIGHUP)
        took.append(in_force(proxy.url, quota_key, 429))
        write()  # no quota at all (about 20 calls so far: the account's 50 are far)
        proxy.proc.send_signal(signal.SIGHUP)
        took.append(in_force(proxy.url, quota_key, 200))
    finally:
        proxy.stop()
    print(f"figures quota reload: in force after {[round(t, 2) for t in took]} s")
    assert max(took) < 1.0


@pytest.mark.timeout(300)
def test_accounts_added_changed_and_removed_under_load(tmp_path: Path, emulator_factory) -> None:
    """Accounts change with a reload too, on both workers of a 2-worker proxy, while 20 apps
    of a running account keep calling: an added account serves its client within 1 s (one
    platform session for both workers); its credentials changed, it keeps its session; removed,
    its client is refused within 1 s and its session is revoked on the platform exactly once.
    The running account's apps see no failure and no new session; a file that gives a running
    account another app is refused and changes nothing."""
    emulator = emulator_factory("--auth-rate", "0")
    config, proxy_table, store = reloadable(tmp_path, "accounts", emulator.url)
    stable = {"name": "stable", "account": "main", "key": STABLE}
    second = jwt_account("second", jwt="demo-jwt-credential-2")  # user 100002 of the seed
    second_key = "second-app-key-0123456789"
    second_client = {"name": "second-app", "account": "second", "key": second_key}

    def write(accounts: list[dict], clients: list[dict]) -> None:
        config.write_text(render_config(proxy_table, accounts, [stable, *clients], store,
                                        {"mode": "observe"}))

    def owner_of(key: str) -> str:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            return str(client.get(EXT).json().get("id"))

    write([jwt_account()], [])
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    url = proxy.url
    load = AppsCalling(url, STABLE)
    statuses = load.statuses
    took: list[float] = []
    pair = "demo-client-id/100002"
    try:
        settled(statuses, emulator)
        before = emulator.counters()
        write([jwt_account(), second], [second_client])  # 1: an account and its client
        proxy.proc.send_signal(signal.SIGHUP)
        took.append(in_force(url, second_key, 200))
        assert owner_of(second_key) == "100002"
        added = emulator.counters()
        write([jwt_account(), {**second, "access_token_ttl": 1800}], [second_client])  # 2
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert status_of(url, second_key) == 200
        changed = emulator.counters()
        write([jwt_account(), {**second, "client_id": "demo-nojwt-client"}],  # 3: refused
              [second_client])
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert status_of(url, second_key) == 200
        write([jwt_account()], [])  # 4: the account goes, with its client
        proxy.proc.send_signal(signal.SIGHUP)
        took.append(in_force(url, second_key, 401))
        deadline = time.monotonic() + 15
        while emulator.counters()["live_sessions"].get(pair) and time.monotonic() < deadline:
            time.sleep(0.2)  # bounded: the removal revokes once the requests in flight finish
        removed = emulator.counters()
    finally:
        load.stop()
        proxy.stop()
    log = proxy.logs()
    print(f"figures accounts reload: {sum(statuses.values())} app requests {dict(statuses)}; "
          f"in force after {[round(t, 2) for t in took]} s; logins "
          f"{added['logins'] - before['logins']} (add), "
          f"{changed['logins'] - added['logins']} (change); revocations "
          f"{removed['revocations'] - changed['revocations']} (remove)")
    assert set(statuses) == {200}, statuses
    assert max(took) < 1.0
    assert added["logins"] - before["logins"] == 1  # one session for the new account
    assert changed["logins"] == added["logins"]  # new settings, same session
    assert removed["logins"] == changed["logins"]  # main never logged in again
    assert removed["revocations"] - changed["revocations"] == 1  # once, for both workers
    assert not removed["live_sessions"].get(pair)
    assert log.count("config reload refused") == 2 and "second (client_id)" in log
    assert log.count("account second removed by the reload") == 2
    assert STABLE not in log and second_key not in log and "demo-jwt-credential-2" not in log


@pytest.mark.timeout(120)
def test_a_reload_changes_the_log_settings(tmp_path: Path, emulator_factory) -> None:
    """Log settings change with a reload: the access log turned on (a file) is written from the
    next request, the process's log turns JSON from the reload's own line on, the access log
    turned off again stops; a key only a restart applies is named precisely."""
    emulator = emulator_factory("--auth-rate", "0")
    config, base, store = reloadable(tmp_path, "logs", emulator.url)
    access = tmp_path / "access.log"

    def write(**proxy: object) -> None:
        config.write_text(render_config({**base, **proxy}, [jwt_account()],
                                        [{"name": "app", "account": "main", "key": STABLE}],
                                        store, {"mode": "observe"}))

    write(access_log="off", log_format="text")
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        assert status_of(proxy.url, STABLE) == 200
        assert not access.exists()
        write(access_log=str(access), log_format="json", token_wait_timeout=20.0)
        proxy.proc.send_signal(signal.SIGHUP)
        took = in_force(proxy.url, STABLE, 200)
        time.sleep(0.3)
        lines = access.read_text().splitlines()
        write(access_log="off", log_format="json", token_wait_timeout=20.0)
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        for _ in range(3):
            assert status_of(proxy.url, STABLE) == 200
        after_off = access.read_text().splitlines()
    finally:
        proxy.stop()
    log = proxy.logs().splitlines()
    reloaded = [line for line in log if "config reloaded from" in line]
    assert took < 1.0
    assert len(lines) >= 6 and all(json.loads(line)["client"] == "app" for line in lines)
    assert after_off == lines  # off: not one line more
    assert len(reloaded) == 2 and all(line.startswith("{") for line in reloaded)
    assert json.loads(reloaded[0])["message"].endswith(
        "needs a restart to change: [proxy] token_wait_timeout")
    assert STABLE not in access.read_text()


@pytest.mark.timeout(120)
def test_a_reload_changes_the_rate_limit_settings(tmp_path: Path, emulator_factory) -> None:
    """[rate_limits] changes with a reload: observe lets a client past its quota, enforce
    (reloaded) holds it to it within 1 s, observe again lets it through within 1 s; the window,
    which shapes the budgets, is named as needing a restart."""
    emulator = emulator_factory("--auth-rate", "0")
    config, proxy_table, store = reloadable(tmp_path, "rates", emulator.url)
    key = "rates-app-key-0123456789"

    def write(**rate_limits: object) -> None:
        capped = {"name": "capped", "account": "main", "key": key, "rate_quota": {"Light": 2}}
        config.write_text(render_config(proxy_table, [jwt_account()], [capped], store,
                                        {"max_wait": 0.2, **rate_limits}))

    write(mode="observe")
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
    try:
        observed = [status_of(proxy.url, key) for _ in range(4)]
        write(mode="enforce")
        proxy.proc.send_signal(signal.SIGHUP)
        took = [in_force(proxy.url, key, 429)]
        write(mode="observe", window=30)
        proxy.proc.send_signal(signal.SIGHUP)
        took.append(in_force(proxy.url, key, 200))
    finally:
        proxy.stop()
    print(f"figures rate-limit reload: in force after {[round(t, 2) for t in took]} s")
    assert observed == [200] * 4
    assert max(took) < 1.0
    assert "needs a restart to change: [rate_limits] window" in proxy.logs()
