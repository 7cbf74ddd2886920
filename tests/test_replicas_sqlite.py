"""Several proxy processes sharing one SQLite store renew each account once, not once each:
the renewal lock plus adoption of the generation another process stored."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "replica-app-key-0123456789"


def test_three_replicas_share_one_session(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--access-ttl", "3", "--auth-rate", "0")
    config = tmp_path / "replica.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"path": str(tmp_path / "shared.db")}))
    replicas = [start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
                for _ in range(3)]
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    duration, revoke_every = 30.0, 7.0
    end = time.monotonic() + duration
    try:
        def worker(index: int) -> None:
            with replicas[index % 3].http(KEY) as client:
                for _ in range(5000):  # bounded
                    if time.monotonic() >= end:
                        return
                    status = client.get(EXT).status_code
                    with lock:
                        statuses[status] += 1
                    time.sleep(0.05)

        revocations = 0
        with ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(worker, i) for i in range(30)]
            for _ in range(int(duration // revoke_every)):
                time.sleep(revoke_every)
                emulator.revoke_all()
                revocations += 1
            for future in futures:
                future.result(timeout=120)
    finally:
        for replica in replicas:
            replica.stop()
    counters = emulator.counters()
    expiries = duration / 3
    print(f"figures replicas: {statuses} token_calls={counters['token_calls']} "
          f"({counters['token_calls_by_grant']}) revocations={revocations} "
          f"max_proxy={counters['max_live_sessions_proxy']}")
    assert set(statuses) == {200}, statuses
    assert counters["token_calls"] <= expiries + revocations + 3, counters
    assert max(counters["max_live_sessions_proxy"].values()) <= 1
