"""Status across processes (issue 19, item 7): every worker and replica writes a small report of
itself to the shared token store, and ``/status`` — hence ``tokenproxy status`` and the status
page — lists them all and sums what each process knows alone.

Data flow: :meth:`~proxy_addon.ops.admin.AdminServer.process_view` (this process's accounts as it
sees them, its API rate-limit budgets, its WebSocket counts, the requests it served and has in
flight) → :class:`ProcessReports` writes it as JSON (:func:`encode_report`) at start, then every
``[proxy] status_report_interval`` seconds, to live ``WINDOW_FACTOR`` intervals in the store (the
window: 60 s by default; removed at a clean stop, left to run out after a crash) → on each
``/status`` the admin listener reads the other processes' reports back
(:meth:`ProcessReports.others`), checks each (:func:`decode_report`: a corrupt or foreign one is
skipped with a warning, never an error of ``/status``) and :func:`merge_status` adds them to its
own figures, taken fresh. The accounts' tokens are shared through the store already; what is
summed is what each process holds by itself: requests, sockets, rate-limit slots and waits.

A report holds no secret (no token, store key, client key or admin token): names, states, counts
and each account's last error and hint, which ``/status`` shows anyway. It is stored as it is,
not sealed. A store that lives inside one process (``memory``) shares nothing: ``/status`` then
lists the process asked alone and says so (``processes_shared: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..store import StoreError, TokenStore

log = logging.getLogger("tokenproxy.status")

FORMAT = "tokenproxy-process-report/1"
WINDOW_FACTOR = 6  # a report is listed this many intervals after it was written (60 s at 10 s)
STORE_DEADLINE = 2.0  # s /status waits for the store's reports, then lists itself alone
HEALTHY_STATES = ("healthy", "idle", "refreshing")  # as admin.HEALTHY_STATES
MAX_REPORT_BYTES = 32 * 1024 * 1024  # a report read back beyond this is refused unread
MAX_TEXT = 500  # characters kept of any text of a report read back
MAX_ITEMS = 200_000  # accounts (or groups of one account) a report read back may have
EVENT_FIGURES = ("app_sockets", "app_sessions", "upstream_sockets", "subscribed_filters")
WARNED_MAX = 1000  # distinct bad reports warned about, before the memory of them starts over


@dataclass(frozen=True)
class ProcessIdentity:
    """Who reports: ``id`` is host, pid and a random part (a restarted process, or a pid reused
    on another host, is another process)."""

    id: str
    host: str
    pid: int
    worker: int | None  # the index given by ``tokenproxy run --workers N``, else None
    version: str
    started: float  # Unix time

    @classmethod
    def here(cls, worker: int | None, version: str) -> ProcessIdentity:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host, pid, worker, version,
                   time.time())


def local_view(body: Mapping[str, Any], requests: Mapping[str, int],
               draining: bool) -> dict[str, Any]:
    """The per-process part of a report, from this process's own ``/status`` body."""
    accounts: dict[str, dict[str, Any]] = {}
    rate_limits: dict[str, list[dict[str, Any]]] = {}
    for account in body.get("accounts", []):
        name = str(account["account"])
        accounts[name] = {"state": account.get("state"), "last_error": account.get("last_error"),
                          "hint": account.get("hint"),
                          "live_sessions": account.get("live_sessions", 0),
                          "in_flight": account.get("in_flight", 0)}
        if account.get("rate_limits"):
            rate_limits[name] = [dict(g) for g in account["rate_limits"]]
    events = body.get("events")
    return {"draining": draining,
            "requests": {"served": int(requests.get("served", 0)),
                         "in_flight": int(requests.get("in_flight", 0))},
            "accounts": accounts, "rate_limits": rate_limits,
            "events": ({"app_sockets": events.get("app_sockets", 0),
                        "accounts": {n: {k: e.get(k, 0) for k in EVENT_FIGURES}
                                     for n, e in (events.get("accounts") or {}).items()}}
                       if isinstance(events, Mapping) else None)}


def encode_report(report: Mapping[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":"), allow_nan=False).encode()


# -- reading a report back: anything may be in the store ---------------------------------------


class BadReport(ValueError):
    """A report read back that is not one (the message says why, never quotes it)."""


def _text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadReport(f"{what}: expected text")
    return value[:MAX_TEXT]


def _count(value: Any, what: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadReport(f"{what}: expected a whole number >= 0")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadReport(f"{what}: expected a number")
    return float(value)


def _table(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadReport(f"{what}: expected an object")
    if len(value) > MAX_ITEMS:
        raise BadReport(f"{what}: more than {MAX_ITEMS} entries")
    return value


def _group(g: Any, what: str) -> dict[str, Any]:
    g = _table(g, what)
    return {"group": _text(g.get("group"), f"{what}.group"),
            "limit": _count(g.get("limit"), f"{what}.limit"),
            "window": _number(g.get("window"), f"{what}.window"),
            "used": _count(g.get("used"), f"{what}.used"),
            "remaining": _count(g.get("remaining"), f"{what}.remaining", optional=True),
            "queued": _count(g.get("queued"), f"{what}.queued"),
            "penalty_left": max(0.0, _number(g.get("penalty_left"), f"{what}.penalty_left"))}


def decode_report(key: str, blob: bytes) -> dict[str, Any]:
    """The report stored under ``key``, checked field by field and trimmed to what is shown;
    :class:`BadReport` when it is not a report of this format, or not ``key``'s."""
    if len(blob) > MAX_REPORT_BYTES:
        raise BadReport(f"{len(blob)} bytes, more than a report ever takes")
    try:
        raw = json.loads(blob)
    except (ValueError, RecursionError) as exc:
        raise BadReport(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadReport(f"not a tokenproxy process report ({FORMAT})")
    if raw.get("id") != key:
        raise BadReport("it names another process than the one it is stored under")
    requests = _table(raw.get("requests"), "requests")
    accounts = {}
    for name, a in _table(raw.get("accounts"), "accounts").items():
        a = _table(a, f"accounts.{name}")
        accounts[str(name)[:MAX_TEXT]] = {
            "state": _text(a.get("state"), f"accounts.{name}.state"),
            "last_error": _text(a.get("last_error"), f"accounts.{name}.last_error", True),
            "hint": _text(a.get("hint"), f"accounts.{name}.hint", True),
            "live_sessions": _count(a.get("live_sessions"), f"accounts.{name}.live_sessions"),
            "in_flight": _count(a.get("in_flight"), f"accounts.{name}.in_flight")}
    rate_limits = {}
    for name, groups in _table(raw.get("rate_limits"), "rate_limits").items():
        if not isinstance(groups, list) or len(groups) > MAX_ITEMS:
            raise BadReport(f"rate_limits.{name}: expected a list")
        rate_limits[str(name)[:MAX_TEXT]] = [_group(g, f"rate_limits.{name}") for g in groups]
    events = None
    if raw.get("events") is not None:
        table = _table(raw["events"], "events")
        events = {"app_sockets": _count(table.get("app_sockets"), "events.app_sockets"),
                  "accounts": {str(n)[:MAX_TEXT]: {
                      k: _count(_table(e, f"events.{n}").get(k), f"events.{n}.{k}")
                      for k in EVENT_FIGURES}
                      for n, e in _table(table.get("accounts"), "events.accounts").items()}}
    draining = raw.get("draining")
    if not isinstance(draining, bool):
        raise BadReport("draining: expected true or false")
    return {"format": FORMAT, "id": key[:MAX_TEXT],
            "host": _text(raw.get("host"), "host"),
            "pid": _count(raw.get("pid"), "pid"),
            "worker": _count(raw.get("worker"), "worker", optional=True),
            "version": _text(raw.get("version"), "version"),
            "started": _number(raw.get("started"), "started"),
            "reported_at": _number(raw.get("reported_at"), "reported_at"),
            "admin_url": _text(raw.get("admin_url"), "admin_url", optional=True),
            "draining": draining,
            "requests": {"served": _count(requests.get("served"), "requests.served"),
                         "in_flight": _count(requests.get("in_flight"), "requests.in_flight")},
            "accounts": accounts, "rate_limits": rate_limits, "events": events}


# -- writing this process's report, reading the others' ----------------------------------------


class ProcessReports:
    """This process's report in the store (written every ``interval`` s, living ``window`` s,
    removed by :meth:`stop`) and the other processes' reports read back."""

    def __init__(self, store: TokenStore, identity: ProcessIdentity, interval: float) -> None:
        self.store = store
        self.identity = identity
        self.interval = interval
        self.window = interval * WINDOW_FACTOR
        self.admin_url: str | None = None
        self._view: Callable[[], dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the last write failed (warned once per failing spell)
        self._warned: set[tuple[str, str]] = set()  # (process, digest) of bad reports seen

    @property
    def shared(self) -> bool:
        """Other processes read what this one writes (SQLite, Redis; not the memory store)."""
        return bool(self.store.shares_process_reports)

    def report(self, view: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """This process's report now: its identity and ``view`` (default: the admin's)."""
        me = self.identity
        if view is None:
            view = self._view() if self._view is not None else {}
        return {"format": FORMAT, "id": me.id, "host": me.host, "pid": me.pid,
                "worker": me.worker, "version": me.version, "started": me.started,
                "reported_at": time.time(), "admin_url": self.admin_url, **view}

    async def start(self, view: Callable[[], dict[str, Any]], admin_url: str | None) -> None:
        """Report now (a new process is listed at once), then every ``interval``."""
        self._view, self.admin_url = view, admin_url
        await self._write()
        self._task = asyncio.get_running_loop().create_task(
            self._keep_reporting(), name="tokenproxy-process-report")

    async def _keep_reporting(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._write()

    async def _write(self) -> None:
        try:
            blob = encode_report(self.report())
            await asyncio.wait_for(self.store.put_process_report(self.identity.id, blob,
                                                                 self.window), STORE_DEADLINE)
        except (StoreError, TimeoutError) as exc:
            if not self._failing:  # once per failing spell: the store's own alerts say more
                log.warning("status: cannot write this process's report to the store (other "
                            "processes' `tokenproxy status` will not list it meanwhile): %s",
                            str(exc) or "no answer within 2 s")
            self._failing = True
        except (TypeError, ValueError) as exc:  # a figure JSON cannot take: a bug, said once
            if not self._failing:
                log.warning("status: this process's report cannot be written: %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("status: this process's report is written to the store again")
            self._failing = False

    async def stop(self) -> None:
        """A clean stop: no more reports, and this one's is removed (other processes stop
        listing it at once instead of after the window)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self.store.delete_process_report(self.identity.id),
                                   STORE_DEADLINE)

    async def others(self) -> tuple[list[dict[str, Any]], str | None]:
        """The other processes' reports still within the window, each checked (a bad one is
        skipped with a warning); and why none could be read, or None."""
        if not self.shared:
            return [], None
        try:
            stored = await asyncio.wait_for(self.store.process_reports(), STORE_DEADLINE)
        except StoreError as exc:
            return [], str(exc)
        except TimeoutError:
            return [], f"{self.store.backend} store: no answer within {STORE_DEADLINE:g} s"
        reports = []
        for key, blob in stored.items():
            if key == self.identity.id:
                continue  # our own figures are taken fresh
            try:
                reports.append(decode_report(key, blob))
            except BadReport as exc:
                self._warn(key, blob, str(exc))
        return reports, None

    def _warn(self, key: str, blob: bytes, why: str) -> None:
        """Once per bad report (the status page asks every 5 s)."""
        seen = (key, hashlib.sha256(blob).hexdigest())
        if seen in self._warned:
            return
        if len(self._warned) >= WARNED_MAX:
            self._warned.clear()
        self._warned.add(seen)
        log.warning("status: skipped the report stored for process %r in the %s store: %s",
                    key[:80], self.store.backend, why)


# -- /status across processes ------------------------------------------------------------------


def _process_state(report: Mapping[str, Any]) -> str:
    if report.get("draining"):
        return "draining"
    states = [a.get("state") for a in report.get("accounts", {}).values()]
    return "healthy" if all(s in HEALTHY_STATES for s in states) else "unhealthy"


def _entry(report: Mapping[str, Any], now: float, me: bool) -> dict[str, Any]:
    """A process as ``/status`` lists it: its report and the figures the tables show."""
    events = report.get("events") or {}
    per_account = (events.get("accounts") or {}).values()
    return {**report, "self": me,
            "age": 0.0 if me else max(0.0, now - float(report.get("reported_at", now))),
            "state": _process_state(report),
            "served": report["requests"]["served"], "in_flight": report["requests"]["in_flight"],
            "app_sockets": int(events.get("app_sockets", 0)),
            "app_sessions": sum(int(e.get("app_sessions", 0)) for e in per_account),
            "upstream_sockets": sum(int(e.get("upstream_sockets", 0)) for e in per_account)}


def merge_groups(lists: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One account's API budgets of several processes, group by group: slots used and waits
    summed, the limit and window as the largest, the platform's remaining as the smallest, the
    longest penalty."""
    merged: dict[str, dict[str, Any]] = {}
    for groups in lists:
        for g in groups:
            m = merged.get(g["group"])
            if m is None:
                merged[g["group"]] = dict(g)
                continue
            m["used"] += g["used"]
            m["queued"] += g["queued"]
            m["limit"] = max(m["limit"], g["limit"])
            m["window"] = max(m["window"], g["window"])
            m["penalty_left"] = max(m["penalty_left"], g["penalty_left"])
            if g.get("remaining") is not None:
                m["remaining"] = (g["remaining"] if m.get("remaining") is None
                                  else min(m["remaining"], g["remaining"]))
    return list(merged.values())


def merge_status(body: dict[str, Any], own: Mapping[str, Any],
                 others: list[dict[str, Any]], *, shared: bool, window: float,
                 error: str | None = None, now: float | None = None) -> dict[str, Any]:
    """``body`` (this process's ``/status``) with every process: ``processes`` (this one first,
    fresh, then the others by host, worker and pid), ``totals``, and the per-process figures of
    the existing keys summed: each account's ``in_flight``, its rate-limit groups
    (:func:`merge_groups`) and ``events``; ``healthy`` only when every process's accounts are;
    an account without a last error here shows another process's (``last_error_process``)."""
    now = time.time() if now is None else now
    rest = sorted(
        (_entry(r, now, False) for r in others if r["id"] != own["id"]),
        key=lambda e: (e["host"], -1 if e["worker"] is None else e["worker"], e["pid"], e["id"]))
    entries = [_entry(own, now, True), *rest]
    body["processes"] = entries
    body["processes_shared"] = shared
    body["processes_window"] = window
    if error:
        body["processes_error"] = error
    body["totals"] = {"processes": len(entries),
                      **{k: sum(e[k] for e in entries) for k in (
                          "served", "in_flight", "app_sockets", "app_sessions",
                          "upstream_sockets")}}
    for account in body.get("accounts", []):
        name = account["account"]
        views = [(e, e["accounts"][name]) for e in entries if name in e["accounts"]]
        account["in_flight"] = sum(int(v.get("in_flight", 0)) for _, v in views)
        account["process_states"] = dict(Counter(str(v.get("state")) for _, v in views))
        if not account.get("last_error"):  # another process's, the freshest report first
            for e, v in sorted(views[1:], key=lambda ev: -float(ev[0]["reported_at"])):
                if v.get("last_error"):
                    account.update(last_error=v["last_error"], hint=v.get("hint"),
                                   last_error_process=e["id"])
                    break
        if "rate_limits" in account:
            account["rate_limits"] = merge_groups(
                e.get("rate_limits", {}).get(name, []) for e in entries)
    if any(e["state"] == "unhealthy" for e in entries[1:]):
        body["healthy"] = False
    if isinstance(body.get("events"), Mapping):
        body["events"] = _merge_events(e.get("events") for e in entries)
    return body


def _merge_events(views: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {"app_sockets": 0, "accounts": {}}
    for view in views:
        if not view:
            continue
        merged["app_sockets"] += int(view.get("app_sockets", 0))
        for name, figures in (view.get("accounts") or {}).items():
            into = merged["accounts"].setdefault(name, dict.fromkeys(EVENT_FIGURES, 0))
            for k in EVENT_FIGURES:
                into[k] += int(figures.get(k, 0))
    return merged
