"""Status across processes (issue 19.7), in process: the report a process writes of itself
(no secret in it), what a report read back must be (anything else is skipped with one warning),
how ``/status`` sums the processes, and how ``tokenproxy status`` and the status page show
them. The real processes are in ``test_status_processes_e2e.py``."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from proxy_addon.cli.status import render
from proxy_addon.ops.processes import (
    FORMAT,
    BadReport,
    ProcessIdentity,
    ProcessReports,
    decode_report,
    encode_report,
    local_view,
    merge_status,
)
from proxy_addon.ops.status_page import render_status_page
from proxy_addon.store.base import RecordCodec
from proxy_addon.store.crypto import TokenCipher
from proxy_addon.store.memory import MemoryStore
from proxy_addon.store.sqlite import SQLiteStore
from tests.ops.test_status_page_e2e import parse
from tests.support.proxy import STORE_KEY


def group(name: str = "light", **extra: Any) -> dict[str, Any]:
    return {"group": name, "limit": 50, "window": 60.0, "used": 1, "remaining": None,
            "queued": 0, "penalty_left": 0.0, **extra}


def account(name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"account": name, "grant": "jwt", "state": "healthy", "state_since": 1.0e9,
            "access_expires_in": 100.0, "refresh_expires_in": None, "live_sessions": 1,
            "max_live_tokens": 1, "last_refresh": 1.0e9, "last_error": None, "hint": None,
            "token_calls": 1, "in_flight": 0, **extra}


def body(*accounts: dict[str, Any], app_sockets: int = 0) -> dict[str, Any]:
    return {"time": 1.0e9 + 10, "healthy": True, "accounts": list(accounts or [account()]),
            "events": {"app_sockets": app_sockets, "accounts": {"main": {
                "app_sessions": app_sockets, "app_sockets": app_sockets,
                "upstream_sockets": 1, "subscribed_filters": 2}}}}


def report(pid: int, status: dict[str, Any], served: int = 0, in_flight: int = 0,
           worker: int | None = None, reported_at: float = 1.0e9 + 8,
           draining: bool = False) -> dict[str, Any]:
    identity = ProcessIdentity(f"h:{pid}:ab", "h", pid, worker, "0.1.0", 1.0e9)
    view = local_view(status, {"served": served, "in_flight": in_flight}, draining)
    return {"format": FORMAT, "id": identity.id, "host": "h", "pid": pid, "worker": worker,
            "version": "0.1.0", "started": 1.0e9, "reported_at": reported_at,
            "admin_url": f"http://127.0.0.1:{9000 + pid}", **view}


def roundtrip(r: dict[str, Any]) -> dict[str, Any]:
    return decode_report(r["id"], encode_report(r))


# -- a report read back ------------------------------------------------------------------------


def test_a_report_survives_the_store_as_it_was_written() -> None:
    r = report(7, body(account(rate_limits=[group(remaining=3)]), app_sockets=2), served=5,
               worker=1)
    assert roundtrip(r) == r


@pytest.mark.parametrize("blob, why", [
    (b"\x00\xff garbage", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (b"[1, 2]", "not a tokenproxy process report"),
    (b'{"format": "tokenproxy-process-report/0", "id": "k"}', "not a tokenproxy process"),
    (json.dumps({"format": FORMAT, "id": "another"}).encode(), "names another process"),
], ids=["binary", "deep", "foreign-json", "other-format", "other-id"])
def test_garbage_or_foreign_bytes_are_refused_with_a_reason(blob: bytes, why: str) -> None:
    with pytest.raises(BadReport, match=why):
        decode_report("k", blob)


@pytest.mark.parametrize("path, value", [
    (("pid",), "12"), (("pid",), -1), (("worker",), 1.5), (("started",), float("nan")),
    (("draining",), "no"), (("requests", "served"), None), (("accounts",), []),
    (("accounts", "main", "state"), 3), (("accounts", "main", "in_flight"), True),
    (("rate_limits", "main"), {"group": "x"}), (("rate_limits", "main", 0, "used"), -2),
    (("events", "accounts", "main", "app_sockets"), "1"), (("events",), [1]),
])
def test_a_report_with_a_field_of_the_wrong_kind_is_refused(path: tuple, value: Any) -> None:
    r = report(7, body(account(rate_limits=[group()])))
    target: Any = r
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    blob = json.dumps(r).encode()
    with pytest.raises(BadReport, match=str(path[0])):
        decode_report(r["id"], blob)


def test_texts_are_bounded_and_nothing_unknown_is_kept() -> None:
    r = report(7, body(account(last_error="x" * 10_000)))
    r["extra"] = {"anything": "goes"}
    r["accounts"]["main"]["token"] = "should-not-survive"
    decoded = roundtrip(r)
    assert len(decoded["accounts"]["main"]["last_error"]) == 500
    assert "extra" not in decoded and "token" not in decoded["accounts"]["main"]


# -- /status across processes ------------------------------------------------------------------


def test_status_sums_what_each_process_holds() -> None:
    mine = body(account(in_flight=1, rate_limits=[group(used=3, queued=1)]), app_sockets=2)
    theirs = body(account(in_flight=2, rate_limits=[
        group(used=4, remaining=7, penalty_left=12.0), group("heavy", limit=10)]),
        app_sockets=3)
    own = report(1, mine, served=10, in_flight=1, worker=0)
    other = roundtrip(report(2, theirs, served=32, in_flight=2, worker=1))
    merged = merge_status(mine, own, [other], shared=True, window=60.0, now=1.0e9 + 10)
    processes = merged["processes"]
    assert [(p["pid"], p["self"]) for p in processes] == [(1, True), (2, False)]
    assert processes[0]["age"] == 0 and processes[1]["age"] == pytest.approx(2.0)
    assert merged["totals"] == {"processes": 2, "served": 42, "in_flight": 3, "app_sockets": 5,
                                "app_sessions": 5, "upstream_sockets": 2}
    (main,) = merged["accounts"]
    assert main["in_flight"] == 3 and main["process_states"] == {"healthy": 2}
    light, heavy = main["rate_limits"]
    assert (light["used"], light["queued"], light["remaining"], light["penalty_left"]) == \
        (7, 1, 7, 12.0)
    assert heavy["group"] == "heavy" and heavy["limit"] == 10
    assert merged["events"]["app_sockets"] == 5
    assert merged["events"]["accounts"]["main"] == {"app_sessions": 5, "app_sockets": 5,
                                                    "upstream_sockets": 2,
                                                    "subscribed_filters": 4}
    assert merged["healthy"] is True and merged["processes_shared"] is True


def test_another_processs_trouble_shows_here() -> None:
    mine = body(account())
    theirs = body(account(state="misconfigured", last_error="invalid_client",
                          hint="check client_secret"))
    merged = merge_status(mine, report(1, mine), [roundtrip(report(2, theirs))], shared=True,
                          window=60.0)
    (main,) = merged["accounts"]
    assert merged["healthy"] is False  # a worker's account needs a person
    assert main["state"] == "healthy"  # this process's own view stays
    assert (main["last_error"], main["hint"], main["last_error_process"]) == (
        "invalid_client", "check client_secret", "h:2:ab")
    assert main["process_states"] == {"healthy": 1, "misconfigured": 1}
    assert merged["processes"][1]["state"] == "unhealthy"


def test_the_memory_store_lists_the_process_asked_and_says_so() -> None:
    mine = body()
    merged = merge_status(mine, report(1, mine, served=3), [], shared=False, window=60.0)
    assert [p["pid"] for p in merged["processes"]] == [1]
    table = render(merged)
    assert "PROCESS" in table and "h:1:ab *" in table
    assert "only the process asked: its store (memory) is not shared" in table


def test_the_cli_prints_a_processes_table_with_a_total() -> None:
    mine = body(app_sockets=1)
    others = [roundtrip(report(2, body(app_sockets=2), served=20, worker=1, draining=True))]
    merged = merge_status(mine, report(1, mine, served=10, worker=0), others, shared=True,
                          window=60.0, now=1.0e9 + 12)
    lines = render(merged).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PROCESS "))
    assert lines[header].split()[:4] == ["PROCESS", "HOST", "PID", "WORKER"]
    assert lines[header + 1].split() == ["h:1:ab", "*", "h", "1", "0", "now", "10", "0", "1",
                                         "healthy"]
    assert lines[header + 2].split() == ["h:2:ab", "h", "2", "1", "4s", "ago", "20", "0", "2",
                                         "draining"]
    assert lines[header + 3].split() == ["TOTAL", "30", "0", "3"]
    assert "2 process(es) reported within the last 1m0s" in lines[header + 4]
    merged["processes_error"] = "redis store x: down"
    merged["processes"] = merged["processes"][:1]
    assert "the other processes' reports cannot be read: redis store x: down" in render(merged)


def test_the_status_page_lists_the_processes_escaped() -> None:
    mine = body()
    evil = report(2, body(), served=4)
    evil.update(id='<b>"evil"</b>', host="<script>x</script>")
    merged = merge_status(mine, report(1, mine), [roundtrip(evil)], shared=True, window=60.0)
    html = render_status_page(merged)
    assert "<script>x" not in html and "<b>" not in html
    doc = parse(html)
    assert doc.find(id="process-count").text == "2"
    table = doc.find("table", id="process-table")
    me = table.find("tr", data_self="true")
    assert me.find(data_role="process-age").text == "now"
    other = table.find("tr", data_process='<b>"evil"</b>')
    assert other.find(data_role="process-host").text == "<script>x</script>"
    assert other.find(data_role="process-served").text == "4"
    assert "1m0s" in doc.find(data_role="processes-note").text


# -- writing and reading through a store -------------------------------------------------------


def codec() -> RecordCodec:
    return RecordCodec(TokenCipher([STORE_KEY.encode()]))


def test_reports_through_a_shared_store(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    async def scenario() -> None:
        stores = [SQLiteStore(codec(), tmp_path / "t.db") for _ in range(2)]
        for store in stores:
            await store.open()
        reporters = [ProcessReports(s, ProcessIdentity.here(i, "0.1.0"), 0.2)
                     for i, s in enumerate(stores)]
        try:
            for i, reporter in enumerate(reporters):
                await reporter.start(lambda i=i: local_view(body(app_sockets=i),
                                                            {"served": i}, False), None)
            assert reporters[0].window == pytest.approx(1.2)
            others, error = await reporters[0].others()
            assert error is None and [o["id"] for o in others] == [reporters[1].identity.id]
            assert others[0]["worker"] == 1 and others[0]["requests"]["served"] == 1
            secret_free = (await stores[0].process_reports())[reporters[0].identity.id]
            assert STORE_KEY.encode() not in secret_free
            # garbage beside them: skipped, one warning per bad report however often read
            await stores[0].put_process_report("evil", b"\x00garbage", 30)
            for _ in range(3):
                others, error = await reporters[0].others()
                assert [o["id"] for o in others] == [reporters[1].identity.id]
            warnings = [r for r in caplog.records if "skipped the report" in r.getMessage()]
            assert len(warnings) == 1 and "'evil'" in warnings[0].getMessage()
            # a clean stop removes the report at once
            await reporters[1].stop()
            others, _ = await reporters[0].others()
            assert others == []
        finally:
            for reporter in reporters:
                await reporter.stop()
            for store in stores:
                await store.close()

    caplog.set_level(logging.WARNING, "tokenproxy.status")
    asyncio.run(scenario())


def test_a_memory_store_shares_nothing_and_a_failing_store_is_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    class Failing(MemoryStore):
        async def put_process_report(self, process: str, report: bytes, ttl: float) -> None:
            from proxy_addon.store import StoreError

            raise StoreError("memory store: down")

    async def scenario() -> None:
        reporter = ProcessReports(MemoryStore(codec()), ProcessIdentity.here(None, "v"), 10)
        assert not reporter.shared and await reporter.others() == ([], None)
        failing = ProcessReports(Failing(codec()), ProcessIdentity.here(None, "v"), 0.05)
        await failing.start(lambda: {}, None)
        await asyncio.sleep(0.3)  # several failed writes
        await failing.stop()

    caplog.set_level(logging.INFO, "tokenproxy.status")
    asyncio.run(scenario())
    said = [r for r in caplog.records if "cannot write this process's report" in r.getMessage()]
    assert len(said) == 1
