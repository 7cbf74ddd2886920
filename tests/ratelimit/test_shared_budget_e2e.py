"""Issue 17: budgets shared across processes through the store. Real processes: the emulator
enforcing the API limits (``--api-rate enforce``), real ``tokenproxy run`` replicas on a real
redis-server, and ``tokenproxy run --workers 2`` on one SQLite file.

- 3 replicas sharing Redis and 2 workers sharing SQLite, the apps spread over them: the platform
  answers 0 429s, and each group's budget is used as one budget: >= 80 % (a split of limit/N
  could not use Heavy's 5 per window with 3 replicas beyond 3, 60 %; at 4 s windows one missed
  Heavy slot is 3 %, and the window's margin for arrival jitter costs 2-7 %).
- Redis away: each replica falls back to limit/N of the budget, never to unlimited.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx

from tests.support.processes import stop_process
from tests.support.proxy import (
    STORE_KEY,
    client,
    jwt_account,
    render_config,
    start_proxy,
    start_proxy_with_config,
)

from .load import APPS, EXT, LIMITS, WINDOW, app_key, emulator_args, offer, warm_up

WINDOWS = 6
MAX_WAIT = 3.0
CLIENTS = [client(f"app{n:02d}", key=app_key(n)) for n in range(APPS)]
ENFORCE = {"mode": "enforce", "max_wait": MAX_WAIT}


def _check(outcome, counters, usage: float) -> None:
    assert not outcome.unexpected, outcome.unexpected[:5]
    assert sum(counters["api_429_by_group"].values()) == 0, counters["api_429_by_group"]
    for group, limit in LIMITS.items():
        capacity = limit * (outcome.elapsed / WINDOW)
        assert outcome.served_group[group] >= usage * capacity, \
            (group, outcome.served_group[group], capacity)


def test_three_replicas_on_redis_keep_to_one_budget(tmp_path: Path, emulator_factory,
                                                     redis_factory) -> None:
    emulator = emulator_factory(*emulator_args())
    redis = redis_factory()
    store = {"backend": "redis", "url": redis.url, "prefix": f"rl{uuid.uuid4().hex[:8]}"}
    replicas = [start_proxy(tmp_path, emulator.url, accounts=[jwt_account()], clients=CLIENTS,
                            store=store, rate_limits={**ENFORCE, "replicas": 3})
                for _ in range(3)]
    try:
        for replica in replicas:
            warm_up(replica.url)
        emulator.reset_counters()
        outcome = offer([r.url for r in replicas], WINDOW * WINDOWS)
        counters = emulator.counters()
    finally:
        for replica in replicas:
            replica.stop()
    print(f"figures shared redis: served {dict(outcome.served_group)} in "
          f"{outcome.elapsed:.1f} s, platform 429s {counters['api_429_by_group']}")
    _check(outcome, counters, usage=0.8)


def test_two_workers_on_sqlite_keep_to_one_budget(tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory(*emulator_args())
    config = tmp_path / "workers.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0},
        [jwt_account()], CLIENTS, {"path": str(tmp_path / "workers.db")}, ENFORCE))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    try:
        warm_up(proxy.url)
        emulator.reset_counters()
        outcome = offer([proxy.url], WINDOW * WINDOWS)
        counters = emulator.counters()
    finally:
        proxy.stop()
    print(f"figures shared sqlite: served {dict(outcome.served_group)} in "
          f"{outcome.elapsed:.1f} s, platform 429s {counters['api_429_by_group']}")
    _check(outcome, counters, usage=0.8)


async def _bursts(urls: list[str], size: int) -> list[int]:
    """``size`` Light requests at once to each URL, all within one window: how many each
    served."""
    async def burst(url: str) -> int:
        async with httpx.AsyncClient(base_url=url, timeout=30, headers={
                "Authorization": f"Bearer {app_key(1)}"}) as http:
            answers = await asyncio.gather(*(http.get(EXT) for _ in range(size)))
        return sum(a.status_code == 200 for a in answers)

    return list(await asyncio.gather(*(burst(url) for url in urls)))


def test_with_redis_away_each_replica_keeps_to_its_share(tmp_path: Path, emulator_factory,
                                                          redis_factory) -> None:
    """The store paused (SIGSTOP): each of 2 replicas serves at most limit/2 of a group per
    window, so together they still never exceed the limit; never unlimited."""
    emulator = emulator_factory(*emulator_args())
    redis = redis_factory()
    store = {"backend": "redis", "url": redis.url, "prefix": f"rl{uuid.uuid4().hex[:8]}"}
    replicas = [start_proxy(tmp_path, emulator.url, accounts=[jwt_account()], clients=CLIENTS,
                            store=store, rate_limits={"mode": "enforce", "max_wait": 0.2,
                                                      "replicas": 2})
                for _ in range(2)]
    try:
        for replica in replicas:
            warm_up(replica.url)
        redis.pause()
        try:
            for replica in replicas:  # the first request finds Redis away
                with httpx.Client(base_url=replica.url, timeout=30, headers={
                        "Authorization": f"Bearer {app_key(0)}"}) as http:
                    http.get(EXT)
            time.sleep(WINDOW * 1.1)
            emulator.reset_counters()
            served = asyncio.run(_bursts([r.url for r in replicas], 2 * LIMITS["Light"]))
            counters = emulator.counters()
        finally:
            redis.resume()
        logs = "".join(r.logs() for r in replicas)
    finally:
        for replica in replicas:
            stop_process(replica.proc, 10)
    assert served == [LIMITS["Light"] // 2] * 2, served
    assert sum(counters["api_429_by_group"].values()) == 0, counters["api_429_by_group"]
    assert "keeps to 1/2 of the budget" in logs
