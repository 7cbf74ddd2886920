"""Crash safety: ``kill -9`` the proxy at random points of a refresh, restart it, repeat.

The emulator's token endpoint answers 0.4 s late (fault option ``--token-delay``) *after* it has
rotated the pair, which is the dangerous window: the platform has already killed the old pair
and the proxy has not saved the new one. Like the real platform, the emulator honours a replay
of the previous refresh token for a short grace window (``--refresh-grace``) and answers with
the same new pair; a proxy restarted from its store recovers through it instead of locking the
account out.

Per trial: traffic on two accounts (JWT grant; refresh-token grant seeded from config), kill at
a random instant, mostly while a token call is in flight, restart from the same store, and
every request to the restarted proxy must succeed; no account ever reaches reauth_required.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import (
    STORE_KEY,
    Proxy,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
KEYS = {"main": "crash-main-key-0123456789", "seeded": "crash-seeded-key-0123456789"}
TOKEN_DELAY, ACCESS_TTL, GRACE = 0.3, 2, 30
# ~7 s a trial (mostly restarts): 30 + 25 here keep `make test` near its budget;
# `make soak` runs 500 per store (CRASH_TRIALS=500)
TRIALS = {"sqlite": int(os.environ.get("CRASH_TRIALS", 30)),
          "redis": int(os.environ.get("CRASH_TRIALS", 25))}


class Traffic:
    """Background requests to whichever proxy process is current, tagged by incarnation."""

    def __init__(self) -> None:
        self.proxy: Proxy | None = None
        self.incarnation = 0
        self.killed: set[int] = set()
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def worker(self, account: str) -> None:
        for _ in range(100_000):  # bounded; stopped by the test long before
            if self.stop.is_set():
                return
            proxy, incarnation = self.proxy, self.incarnation
            if proxy is None:  # between the kill and the restart
                time.sleep(0.05)
                continue
            try:
                status = httpx.get(proxy.url + EXT, timeout=15,
                                   headers={"Authorization": f"Bearer {KEYS[account]}"}
                                   ).status_code
                outcome = str(status)
            except httpx.TransportError as exc:
                outcome = f"transport:{type(exc).__name__}"
            with self.lock:
                if outcome == "200":
                    self.outcomes["200"] += 1
                elif incarnation in self.killed and outcome.startswith("transport"):
                    self.outcomes["cut by the kill"] += 1  # in flight when the process died
                else:
                    self.outcomes[outcome] += 1
                    self.failures.append(f"{account} incarnation {incarnation}: {outcome}")
            time.sleep(0.02)


def store_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict:
    if backend == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "crash.db")}
    redis = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": redis.url, "prefix": f"c{uuid.uuid4().hex[:8]}"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_kill_9_during_refresh(backend: str, tmp_path: Path, emulator_factory,
                               request: pytest.FixtureRequest) -> None:
    emulator = emulator_factory("--access-ttl", str(ACCESS_TTL), "--auth-rate", "0",
                                "--token-delay", str(TOKEN_DELAY),
                                "--refresh-grace", str(GRACE))
    seeded = {"name": "seeded", "client_id": "demo-client-id",
              "client_secret": "demo-client-secret", "grant": "refresh_token",
              "refresh_token": emulator.user2_refresh_token()}
    config = tmp_path / "crash.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0, "token_wait_timeout": 15},
        [jwt_account(), seeded],
        [{"name": f"{a}-app", "account": a, "key": k} for a, k in KEYS.items()],
        store_for(backend, tmp_path, request)))
    env = {"TOKENPROXY_STORE_KEY": STORE_KEY}
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    traffic = Traffic()
    traffic.proxy = start_proxy_with_config(config, env=env)
    processes = [traffic.proxy]  # every proxy this test starts is stopped at the end
    threads = [threading.Thread(target=traffic.worker, args=(a,), daemon=True)
               for a in KEYS for _ in range(3)]
    for thread in threads:
        thread.start()
    kills: Counter[str] = Counter()
    started = time.monotonic()
    states: Counter[str] = Counter()
    try:
        for trial in range(TRIALS[backend]):
            before = emulator.counters()["token_calls"]
            if rng.random() < 0.7:  # while a token call is in flight (or just answered)
                deadline = time.monotonic() + 3 * ACCESS_TTL
                while emulator.counters()["token_calls"] == before \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, TOKEN_DELAY + 0.1))
                kills["in token call"] += 1
            else:  # anywhere in the token's life
                time.sleep(rng.uniform(0, ACCESS_TTL))
                kills["anytime"] += 1
            killed = traffic.proxy
            assert killed is not None
            with traffic.lock:
                traffic.killed.add(traffic.incarnation)
                traffic.proxy = None
            killed.proc.kill()  # SIGKILL: no shutdown code runs
            killed.proc.wait(10)
            proxy = start_proxy_with_config(config, env=env)
            processes.append(proxy)
            for account, key in KEYS.items():  # every request after the restart succeeds
                with proxy.http(key) as client:
                    for _ in range(3):
                        response = client.get(EXT)
                        assert response.status_code == 200, (trial, account, response.text)
            for account in KEYS:
                states[proxy.account_status(account)["state"]] += 1
            with traffic.lock:
                traffic.proxy, traffic.incarnation = proxy, trial + 1
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(30)
        for process in processes:
            process.stop()
    elapsed = time.monotonic() - started
    logs = processes[-1].logs()
    counters = emulator.counters()
    print(f"figures crash[{backend}] seed={seed}: {sum(kills.values())} trials in "
          f"{elapsed:.0f} s, kills={dict(kills)} "
          f"traffic={dict(traffic.outcomes)} states after restart={dict(states)} "
          f"token_calls={counters['token_calls_by_grant']} "
          f"grace replays={counters.get('refresh_replays')} "
          f"max_sessions={counters['max_live_sessions_proxy']}")
    assert not traffic.failures, traffic.failures[:10]
    assert "reauth_required" not in states and "reauthorization required" not in logs
    assert traffic.outcomes["200"] > 0
    # no account was pushed into new sessions beyond its budget by the crashes
    assert max(counters["max_live_sessions_proxy"].values()) <= 5
