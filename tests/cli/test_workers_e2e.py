"""`tokenproxy run --workers 2`: two processes serve one address (SO_REUSEPORT) and share the
store: both take requests, the account is renewed once between them, one platform session."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.proxy import (
    STORE_KEY,
    Proxy,
    jwt_account,
    render_config,
    start_proxy_with_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
KEY = "workers-app-key-0123456789"


def metrics_urls(proxy: Proxy, workers: int, timeout: float = 20.0) -> list[str]:
    """Each worker's metrics URL, as it printed it: the config says port 0, so every worker
    binds a free port (no port picked ahead and taken by another test meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        urls = sorted({line.split()[-1] for line in list(proxy.stdout)
                       if line.startswith("tokenproxy metrics on ")})
        if len(urls) >= workers:
            return urls
        time.sleep(0.1)
    raise AssertionError(f"{workers} workers did not all print their metrics URL:\n"
                         f"{''.join(proxy.stdout)}{proxy.logs()}")


def served_2xx(metrics_url: str) -> float:
    text = httpx.get(metrics_url + "/metrics", timeout=10).text
    match = re.search(r'tokenproxy_requests_total\{account="main",client="app",'
                      r'status_class="2xx"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def test_two_workers_share_one_address_and_one_session(tmp_path: Path,
                                                       emulator_factory) -> None:
    emulator = emulator_factory("--access-ttl", "2", "--auth-rate", "0")
    config = tmp_path / "workers.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
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
        worker_metrics = metrics_urls(proxy, 2)  # both workers up
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        per_worker = [served_2xx(url) for url in worker_metrics]
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


def test_workers_start_with_an_https_upstream_and_nothing_listens_on_udp(
        tmp_path: Path) -> None:
    """Regression (found by the transport benchmark): mitmproxy's ``reverse:https://`` mode
    listens on UDP too (HTTP/3), without SO_REUSEPORT, so the second worker died with "address
    already in use" and the supervisor gave up; a single process had an unguarded UDP port."""
    import socket

    config = tmp_path / "workers-https.toml"
    # an https upstream on this host that nothing answers: starting is what is tested
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
         "upstream": "https://127.0.0.1:9", "verify_upstream_tls": False,
         "auth_budget_calls": 0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}],
        {"path": str(tmp_path / "workers.db")}))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    try:
        urls = metrics_urls(proxy, 2)
        time.sleep(2)  # a worker that fails to bind exits within this
        assert proxy.proc.poll() is None, proxy.logs()
        assert all(httpx.get(url + "/healthz", timeout=10).status_code == 200 for url in urls)
        port = int(proxy.url.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))  # free: no worker listens on UDP
        answer = httpx.get(proxy.url + EXT, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code in (502, 503) and answer.json()["errorCode"].startswith("TPX-")
    finally:
        proxy.stop()
    assert "address already in use" not in proxy.logs().lower()
