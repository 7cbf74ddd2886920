"""Issue 15.2: refresh-ahead drains every process sharing the store, not only the renewer.

Before a rotation kills the current access token, the renewing process announces it; the other
workers and replicas stop leasing that token, let their requests on it finish and acknowledge;
only then is the refresh sent. Steady traffic through 3 workers on SQLite and through 3 replicas
on Redis, over at least 15 rotations: the platform (the emulator) answers **0 token 401s** —
what a single process achieves alone. Before the fix, each rotation by one process gave 401s to
requests the others had in flight (replayed where the body allowed it, but counted here where the
platform sees them).
"""

from __future__ import annotations

import asyncio
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
KEY = "drain-app-key-0123456789"
ACCESS_TTL = 3  # s: a rotation every ~2.1 s with refresh_ahead_share 0.3
MIN_ROTATIONS = 15
DURATION = 36.0
CLIENTS = 24


def write_config(tmp_path: Path, upstream: str, store: dict, name: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "", "upstream": upstream,
         "auth_budget_calls": 0, "refresh_ahead_share": 0.3, "drain_timeout": 1.0},
        [jwt_account()], [{"name": "app", "account": "main", "key": KEY}], store))
    return config


async def steady_traffic(urls: list[str], end: float) -> tuple[Counter[int], list[str]]:
    """CLIENTS clients, each a new connection per request (as PHP or cron apps do, and so
    that the kernel spreads them over the workers), round-robin over ``urls``."""
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    sessions = [httpx.AsyncClient(base_url=u, headers={"Authorization": f"Bearer {KEY}"},
                                  timeout=30, limits=limits) for u in urls]

    async def client(index: int) -> None:
        for n in range(5000):  # bounded
            if time.monotonic() >= end:
                return
            try:
                response = await sessions[(index + n) % len(sessions)].get(EXT)
                statuses[response.status_code] += 1
                if response.status_code != 200 and len(failures) < 10:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                statuses[0] += 1
                failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)

    try:
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    finally:
        for session in sessions:
            await session.aclose()
    return statuses, failures


def run_and_count(emulator, proxies: list[Proxy], label: str) -> None:
    for proxy in proxies:  # every process up and serving before the clock starts
        assert httpx.get(proxy.url + EXT, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=30).status_code == 200
    emulator.reset_counters()
    end = time.monotonic() + DURATION
    statuses, failures = asyncio.run(steady_traffic([p.url for p in proxies], end))
    counters = emulator.counters()
    token_401s = sum(counters["api_401_by_code"].values())
    print(f"figures {label}: requests={sum(statuses.values())} statuses={dict(statuses)} "
          f"rotations={counters['refreshes']} platform_token_401={counters['api_401_by_code']} "
          f"logins={counters['logins']}")
    assert set(statuses) == {200}, (statuses, failures)
    assert counters["refreshes"] >= MIN_ROTATIONS, counters
    assert token_401s == 0, counters["api_401_by_code"]
    assert counters["logins"] == 0  # the session of the warm-up request lived throughout


def test_three_sqlite_workers_rotate_without_a_platform_401(tmp_path: Path,
                                                            emulator_factory) -> None:
    emulator = emulator_factory("--access-ttl", str(ACCESS_TTL), "--auth-rate", "0")
    config = write_config(tmp_path, emulator.url,
                          {"backend": "sqlite", "path": str(tmp_path / "workers.db")}, "workers")
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "3"))
    try:
        time.sleep(2.0)  # the three workers bind and join the store's members
        run_and_count(emulator, [proxy], "drain sqlite --workers 3")
    finally:
        proxy.stop()


def test_three_redis_replicas_rotate_without_a_platform_401(tmp_path: Path, emulator_factory,
                                                            request: pytest.FixtureRequest
                                                            ) -> None:
    redis = request.getfixturevalue("redis_server")
    emulator = emulator_factory("--access-ttl", str(ACCESS_TTL), "--auth-rate", "0")
    store = {"backend": "redis", "url": redis.url, "prefix": f"d{uuid.uuid4().hex[:8]}"}
    proxies = []
    try:
        for index in range(3):
            config = write_config(tmp_path, emulator.url, store, f"replica{index}")
            proxies.append(start_proxy_with_config(
                config, env={"TOKENPROXY_STORE_KEY": STORE_KEY}))
        run_and_count(emulator, proxies, "drain redis 3 replicas")
    finally:
        for proxy in proxies:
            proxy.stop()
