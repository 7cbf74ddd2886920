"""Hot reload under load (issue 19, item 1): 10 reloads of a running 2-worker proxy — SIGHUP and
``tokenproxy reload`` — adding and removing a client, rotating its key with overlap, giving it an
allow list and taking it back, changing a weight, two broken files and a restart-only change —
while 20 apps of another client keep calling. Every app request succeeds, no platform session is
created, each change is in force on both workers within 1 s, and a broken file changes nothing."""

from __future__ import annotations

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
    config = tmp_path / "reload.toml"
    proxy_table = {"listen": "127.0.0.1:0", "metrics_listen": "", "upstream": emulator.url,
                   "auth_budget_calls": 0}
    store = {"backend": "sqlite", "path": str(tmp_path / "tokens.db")}
    stable = {"name": "stable", "account": "main", "key": STABLE}

    def write(*clients: dict, proxy: dict | None = None) -> None:
        config.write_text(render_config(proxy or proxy_table, [jwt_account()],
                                        [stable, *clients], store, {"mode": "observe"}))

    write()
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    url = proxy.url
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def app() -> None:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {STABLE}"}) as client:
            for _ in range(5000):  # bounded
                if stop.is_set():
                    return
                try:
                    statuses[client.get(EXT).status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[exc.__class__.__name__] += 1  # type: ignore[index]
                time.sleep(0.05)

    threads = [threading.Thread(target=app) for _ in range(20)]
    for thread in threads:
        thread.start()

    def sighup() -> None:
        proxy.proc.send_signal(signal.SIGHUP)

    def cli_reload() -> None:
        done = subprocess.run([sys.executable, "-m", "proxy_addon", "reload", "--config",
                               str(config)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "signalled 1 process" in done.stdout, done

    took: list[float] = []
    try:
        time.sleep(1.0)
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
        stop.set()
        for thread in threads:
            thread.join(30)
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
