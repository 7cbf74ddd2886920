"""Status across processes (issue 19.7) with real processes: any one process's ``/status`` (and
``tokenproxy status``) lists every worker and replica sharing the store and sums what each holds.

(a) ``tokenproxy run --workers 2`` on SQLite: requests and app WebSockets spread over both
    workers by the kernel (SO_REUSEPORT); worker 0's status lists both processes, and its totals
    equal the sum of what each worker says of itself.
(b) 3 replicas on one real redis-server: each lists all three; one stopped cleanly drops out at
    once (its report removed), one killed with SIGKILL when its last report is older than the
    window (6 x ``status_report_interval``), not before.
(c) bad store contents (garbage, foreign JSON, a report under another name, a field of the wrong
    kind) are skipped with one warning each and ``/status`` still answers; a valid report of a
    process the test made up is listed. With the memory store the process asked is listed alone,
    and the output says so.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.cli.test_workers_e2e import metrics_urls
from tests.events.apps import connect, ws_token
from tests.support.proxy import (
    APP_KEY,
    STORE_KEY,
    Proxy,
    client,
    jwt_account,
    render_config,
    start_proxy,
    start_proxy_with_config,
)

EXT = "/restapi/v1.0/account/~/extension/~"
FORMAT = "tokenproxy-process-report/1"


def status(url: str) -> dict[str, Any]:
    answer = httpx.get(url + "/status", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def me(url: str) -> dict[str, Any]:
    """What the process behind ``url`` says of itself (fresh, not from the store)."""
    return next(p for p in status(url)["processes"] if p["self"])


def status_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "proxy_addon", "status", "--url", url, *args],
                            capture_output=True, text=True, timeout=60)
    print(f"$ tokenproxy status --url {url} {' '.join(args)} -> {result.returncode}\n"
          f"{result.stdout}{result.stderr}")
    return result


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll ``condition()`` every 0.1 s; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


# -- (a) workers -------------------------------------------------------------------------------

WORKER_INTERVAL = 0.5


async def open_sockets_on_both(proxy_url: str, urls: list[str], session: aiohttp.ClientSession,
                               limit: int = 40) -> list[aiohttp.ClientWebSocketResponse]:
    """App WebSockets, each on a new connection, until both workers hold one."""
    sockets = []
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    for _ in range(limit):
        async with httpx.AsyncClient(base_url=proxy_url, headers=headers, timeout=30) as http:
            ws, _ = await connect(session, await ws_token(http))
        sockets.append(ws)
        if len(sockets) >= 4:
            held = await asyncio.gather(*(asyncio.to_thread(me, u) for u in urls))
            if all(h["app_sockets"] > 0 for h in held):
                return sockets
    raise AssertionError(f"{limit} sockets all landed on one worker")


@pytest.mark.timeout(180)
def test_two_workers_each_list_both_and_the_totals_are_their_sum(tmp_path: Path,
                                                                 emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    config = tmp_path / "workers.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0, "status_report_interval": WORKER_INTERVAL},
        [jwt_account()], [client()], {"backend": "sqlite", "path": str(tmp_path / "t.db")}))
    proxy = start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY},
                                    args=("--workers", "2"))
    try:
        urls = metrics_urls(proxy, 2)
        sent = 0
        for _ in range(400):  # bounded: a new connection each time, spread by the kernel
            answer = httpx.get(proxy.url + EXT, headers={"Authorization": f"Bearer {APP_KEY}"},
                               timeout=30)
            assert answer.status_code == 200, answer.text
            sent += 1
            if sent % 5 == 0 and all(me(u)["served"] > 0 for u in urls):
                break
        assert all(me(u)["served"] > 0 for u in urls), "one worker served everything"

        async def with_sockets() -> tuple[int, dict[str, Any], list[dict[str, Any]], str]:
            async with aiohttp.ClientSession() as session:
                sockets = await open_sockets_on_both(proxy.url, urls, session)
                await asyncio.sleep(3 * WORKER_INTERVAL)  # every report written since
                selves = [await asyncio.to_thread(me, u) for u in urls]
                cli = await asyncio.to_thread(status_cli, urls[0], "--json")
                table = await asyncio.to_thread(status_cli, urls[0])
                for ws in sockets:
                    await ws.close()
                assert cli.returncode == 0 and table.returncode == 0
                return len(sockets), json.loads(cli.stdout), selves, table.stdout

        opened, aggregated, selves, table = asyncio.run(with_sockets())
    finally:
        proxy.stop()
    processes = aggregated["processes"]
    print(f"figures status-workers: {sent} requests, {opened} sockets; per worker "
          f"{[(p['worker'], p['served'], p['app_sockets']) for p in processes]}, "
          f"totals {aggregated['totals']}")
    assert len(processes) == 2 and processes[0]["self"] and not processes[1]["self"]
    assert sorted(p["worker"] for p in processes) == [0, 1]
    assert sorted(p["admin_url"] for p in processes) == urls
    assert {p["id"] for p in processes} == {s["id"] for s in selves}
    by_id = {s["id"]: s for s in selves}
    for p in processes:  # what worker 0 lists of each = what that worker says of itself
        mine = by_id[p["id"]]
        assert (p["served"], p["in_flight"], p["app_sockets"], p["pid"]) == (
            mine["served"], mine["in_flight"], mine["app_sockets"], mine["pid"]), (p, mine)
        assert p["served"] > 0 and p["app_sockets"] > 0 and p["state"] == "healthy"
    totals = aggregated["totals"]
    assert totals["processes"] == 2
    assert totals["served"] == sum(s["served"] for s in selves) >= sent + opened
    assert totals["app_sockets"] == sum(s["app_sockets"] for s in selves) == opened
    assert aggregated["events"]["app_sockets"] == opened  # the events table: summed too
    assert aggregated["events"]["accounts"]["main"]["app_sockets"] == opened
    (main,) = aggregated["accounts"]
    assert sum(main["process_states"].values()) == 2  # each worker's view of the account
    lines = table.splitlines()
    rows = [line.split() for line in lines[lines.index(next(
        line for line in lines if line.startswith("PROCESS "))) + 1:]]
    assert rows[2][:4] == ["TOTAL", str(totals["served"]), "0", str(opened)], table
    assert "2 process(es) reported within the last 3s" in table


# -- (b) replicas on Redis ---------------------------------------------------------------------

REPLICA_INTERVAL = 1.0
WINDOW = 6 * REPLICA_INTERVAL


def listed(proxy: Proxy) -> set[str]:
    assert proxy.admin_url
    return {p["id"] for p in status(proxy.admin_url)["processes"]}


@pytest.mark.timeout(180)
def test_replicas_on_one_redis_list_each_other_until_one_dies(tmp_path: Path, emulator_factory,
                                                               redis_server) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    prefix = f"s{uuid.uuid4().hex[:8]}"
    config = tmp_path / "replica.toml"
    config.write_text(render_config(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "upstream": emulator.url,
         "auth_budget_calls": 0, "status_report_interval": REPLICA_INTERVAL},
        [jwt_account()], [client()],
        {"backend": "redis", "url": redis_server.url, "prefix": prefix}))
    replicas = [start_proxy_with_config(config, env={"TOKENPROXY_STORE_KEY": STORE_KEY})
                for _ in range(3)]
    redis = redis_server.client()
    try:
        ids = [me(r.admin_url)["id"] for r in replicas]  # type: ignore[arg-type]
        assert len(set(ids)) == 3
        for replica in replicas:  # each lists all three (each reported at its start)
            wait_for(lambda r=replica: listed(r) == set(ids), 10, "replica listing all three")
        cli = status_cli(replicas[1].admin_url or "")
        assert cli.returncode == 0 and "3 process(es) reported within the last 6s" in cli.stdout
        assert all(i in cli.stdout for i in ids)

        # (c) on Redis: garbage where the reports live is skipped; /status still answers
        redis.hset(f"{prefix}:reports:{{processes}}", "evil", b"\x00\xff not a report")
        redis.zadd(f"{prefix}:reportexp:{{processes}}", {"evil": time.time() + 60})
        assert listed(replicas[0]) == set(ids)
        wait_for(lambda: "skipped the report stored for process 'evil'" in replicas[0].logs(),
                 5, "warning")

        # a clean stop removes its report: gone at once, not after the window
        replicas[2].stop()
        assert listed(replicas[0]) == set(ids[:2])

        # SIGKILL: nothing removes its report; it is listed until the report is too old
        replicas[1].proc.kill()
        replicas[1].proc.wait(10)
        killed = time.monotonic()
        assert ids[1] in listed(replicas[0])
        wait_for(lambda: listed(replicas[0]) == {ids[0]}, WINDOW + 5,
                 "killed replica dropping out")
        dropped = time.monotonic() - killed
        fields = {f.decode() for f in redis.hkeys(f"{prefix}:reports:{{processes}}")}
    finally:
        for replica in replicas:
            replica.stop()
    print(f"figures status-replicas: killed replica dropped out after {dropped:.1f} s "
          f"(window {WINDOW:g} s, reports every {REPLICA_INTERVAL:g} s)")
    assert WINDOW - REPLICA_INTERVAL - 1.5 <= dropped <= WINDOW + 3
    assert fields == {ids[0], "evil"}  # its report was pruned, not only hidden
    assert replicas[0].logs().count("skipped the report stored for process 'evil'") == 1


# -- (c) bad store contents; the memory store ---------------------------------------------------


def ghost_report(process: str) -> dict[str, Any]:
    return {"format": FORMAT, "id": process, "host": "elsewhere", "pid": 4242, "worker": None,
            "version": "0.1.0", "started": time.time() - 100, "reported_at": time.time(),
            "admin_url": None, "draining": False, "requests": {"served": 7, "in_flight": 1},
            "accounts": {"main": {"state": "healthy", "last_error": None, "hint": None,
                                  "live_sessions": 1, "in_flight": 1}},
            "rate_limits": {}, "events": None}


BAD_ROWS = {
    "binary": b"\x00\xff\xfe",
    "foreign-json": b'{"hello": "world"}',
    "deep": b"[" * 50_000 + b"]" * 50_000,
    "renamed": json.dumps(ghost_report("someone-else")).encode(),
    "wrong-kind": json.dumps({**ghost_report("wrong-kind"), "pid": "4242"}).encode(),
}


@pytest.mark.timeout(120)
def test_bad_reports_are_skipped_with_a_warning_and_status_still_answers(
        tmp_path: Path, emulator_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    db_path = tmp_path / "bad.db"
    proxy = start_proxy(tmp_path, emulator.url, status_report_interval=0.5,
                        store={"backend": "sqlite", "path": str(db_path)})
    try:
        with proxy.http() as app:
            assert app.get(EXT).status_code == 200
        rows = {**BAD_ROWS, "ghost": json.dumps(ghost_report("ghost")).encode(),
                "text-column": "plain text"}
        with sqlite3.connect(db_path) as db:
            db.executemany("INSERT OR REPLACE INTO process_reports VALUES (?, ?, ?)",
                           [(k, v, time.time() + 60) for k, v in rows.items()])
        assert proxy.admin_url
        for _ in range(3):  # the status page asks every 5 s: one warning per bad report
            body = status(proxy.admin_url)
            page = httpx.get(proxy.admin_url + "/", timeout=10)
            assert page.status_code == 200 and 'data-process="ghost"' in page.text
        cli = status_cli(proxy.admin_url)
    finally:
        proxy.stop()
    assert [p["id"] for p in body["processes"]][1:] == ["ghost"]
    ghost = body["processes"][1]
    assert (ghost["served"], ghost["in_flight"], ghost["host"]) == (7, 1, "elsewhere")
    assert body["totals"]["processes"] == 2 and body["accounts"][0]["in_flight"] >= 1
    assert "processes_error" not in body
    assert cli.returncode == 0 and "ghost" in cli.stdout
    logs = proxy.logs()
    for name in (*BAD_ROWS, "text-column"):
        assert logs.count(f"skipped the report stored for process {name!r}") == 1, (name, logs)


def test_the_memory_store_lists_the_process_asked_alone(emulator_factory,
                                                        proxy_factory) -> None:
    emulator = emulator_factory("--auth-rate", "0")
    proxy = proxy_factory(emulator.url, store={"backend": "memory"})
    assert proxy.admin_url
    body = status(proxy.admin_url)
    assert body["processes_shared"] is False and len(body["processes"]) == 1
    assert body["processes"][0]["pid"] == proxy.proc.pid
    cli = status_cli(proxy.admin_url)
    assert cli.returncode == 0
    assert "only the process asked: its store (memory) is not shared" in cli.stdout
