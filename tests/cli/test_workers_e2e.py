"""`tokenproxy run --workers 2`: two processes serve one address (SO_REUSEPORT) and share the
store: both take requests, the account is renewed once between them, one platform session."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.proxy import STORE_KEY, jwt_account, render_config, start_proxy_with_config

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "workers-app-key-0123456789"


def two_free_ports() -> int:
    """A port p with p and p + 1 free on loopback (metrics of worker 0 and 1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError("no two adjacent free ports")


def served_2xx(metrics_url: str) -> float:
    text = httpx.get(metrics_url + "/metrics", timeout=10).text
    match = re.search(r'tokenproxy_requests_total\{account="main",client="app",'
                      r'status_class="2xx"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def test_two_workers_share_one_address_and_one_session(tmp_path: Path,
                                                       emulator_factory) -> None:
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0")
    metrics_port = two_free_ports()
    config = tmp_path / "workers.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": f"127.0.0.1:{metrics_port}",
         "upstream": emulator.url, "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"path": str(tmp_path / "workers.db")}))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    duration = 12.0
    end = time.monotonic() + duration

    def client() -> None:
        for _ in range(2000):  # bounded
            if time.monotonic() >= end:
                return
            # a new connection each time: the kernel spreads connections over the workers
            status = httpx.get(proxy.url + EXT, timeout=30,
                               headers={"Authorization": f"Bearer {KEY}"}).status_code
            with lock:
                statuses[status] += 1

    try:
        for _ in range(50):  # both workers up
            try:
                httpx.get(f"http://127.0.0.1:{metrics_port + 1}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        per_worker = [served_2xx(f"http://127.0.0.1:{metrics_port + i}") for i in range(2)]
    finally:
        proxy.stop()
    counters = emulator.counters()
    print(f"figures workers: {dict(statuses)} per worker {per_worker} "
          f"token_calls={counters['token_calls_by_grant']} "
          f"sessions={counters['max_live_sessions_proxy']}")
    assert set(statuses) == {200}, statuses
    assert all(n > 0 for n in per_worker), per_worker  # both workers served
    assert sum(per_worker) == statuses[200]
    assert counters["token_calls"] <= duration / 2 + 3  # one renewal per expiry, not two
    assert max(counters["max_live_sessions_proxy"].values()) == 1
