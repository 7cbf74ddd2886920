"""``tokenproxy status``: every account's token health, read from a running proxy.

It reads ``/status`` on the proxy's ``metrics_listen``. Any one process answers for all: with a
shared store (SQLite, Redis) ``/status`` lists every worker and replica that reported within
the last minute (``ops/processes.py``) and sums their figures, printed as the PROCESSES table
after the account tables; with the memory store only the process asked is listed, and the
output says so. When the proxy sets
``[proxy] admin_token_env``, the token is taken from the environment variable ``--token-env``
names (default ``TOKENPROXY_ADMIN_TOKEN``) and sent as a Bearer credential, never printed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import httpx

from ..ops.status_page import format_duration

EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2
DEFAULT_TOKEN_ENV = "TOKENPROXY_ADMIN_TOKEN"


def render(status: dict) -> str:
    rows = [("ACCOUNT", "STATE", "ACCESS", "REFRESH", "SESSIONS", "LAST REFRESH", "LAST ERROR")]
    now = status.get("time", time.time())
    for a in status["accounts"]:
        last = a.get("last_refresh")
        rows.append((a["account"], a["state"], format_duration(a.get("access_expires_in")),
                     format_duration(a.get("refresh_expires_in")),
                     f"{a.get('live_sessions', 0)}/{a.get('max_live_tokens', 1)}",
                     "-" if last is None else format_duration(now - last) + " ago",
                     a.get("last_error") or "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    for a in status["accounts"]:
        if a.get("hint") and a["state"] != "healthy":
            lines.append(f"{a['account']}: {a['hint']}")
    budgets = [(a["account"], g) for a in status["accounts"] for g in a.get("rate_limits", [])]
    if budgets:  # the API rate-limit groups the proxy has seen, per account
        rows = [("ACCOUNT", "GROUP", "USED/LIMIT", "WINDOW", "PLATFORM LEFT", "QUEUED",
                 "PENALTY")]
        rows += [(account, g["group"], f"{g['used']}/{g['limit']}",
                  format_duration(g["window"]),
                  "-" if g.get("remaining") is None else str(g["remaining"]), str(g["queued"]),
                  format_duration(g["penalty_left"]) if g["penalty_left"] else "-")
                 for account, g in budgets]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
    events = (status.get("events") or {}).get("accounts") or {}
    if any(e.get("app_sessions") for e in events.values()):  # WebSocket subscriptions
        rows = [("ACCOUNT", "APP SOCKETS", "APP SESSIONS", "PLATFORM SOCKETS", "FILTERS")]
        rows += [(name, str(e["app_sockets"]), str(e["app_sessions"]),
                  str(e["upstream_sockets"]), str(e["subscribed_filters"]))
                 for name, e in events.items() if e.get("app_sessions")]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
    if status.get("processes"):
        lines.append("")
        lines += render_processes(status)
    return "\n".join(lines)


def render_processes(status: dict) -> list[str]:
    """The PROCESSES table: every process that reported within the window (``*``: the one
    asked), a total row when there are several, and a line on what the list covers."""
    processes = status["processes"]
    rows = [("PROCESS", "HOST", "PID", "WORKER", "LAST REPORT", "SERVED", "IN FLIGHT",
             "APP SOCKETS", "STATE")]
    rows += [(p["id"] + (" *" if p.get("self") else ""), p.get("host", "-"), str(p.get("pid")),
              "-" if p.get("worker") is None else str(p["worker"]),
              "now" if p.get("self") else format_duration(p.get("age")) + " ago",
              str(p.get("served", 0)), str(p.get("in_flight", 0)), str(p.get("app_sockets", 0)),
              p.get("state", "-")) for p in processes]
    totals = status.get("totals") or {}
    if len(processes) > 1:
        rows.append(("TOTAL", "", "", "", "", str(totals.get("served", 0)),
                     str(totals.get("in_flight", 0)), str(totals.get("app_sockets", 0)), ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    window = format_duration(status.get("processes_window"))
    if not status.get("processes_shared", True):
        lines.append("only the process asked: its store (memory) is not shared with other "
                     "processes")
    elif status.get("processes_error"):
        lines.append("only the process asked: the other processes' reports cannot be read: "
                     f"{status['processes_error']}")
    else:
        lines.append(f"{len(processes)} process(es) reported within the last {window} "
                     "(* the one asked); the tables above sum their figures")
    return lines


def main(url: str, as_json: bool, token_env: str = DEFAULT_TOKEN_ENV) -> int:
    token = os.environ.get(token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + "/status", headers=headers, timeout=10)
        if response.status_code == 401:
            why = f"the token in {token_env} was refused" if token else f"{token_env} is not set"
            print(f"tokenproxy status: {url}/status answered 401: the proxy requires its admin "
                  f"token ([proxy] admin_token_env) and {why}; export it (or name another "
                  "variable with --token-env)", file=sys.stderr)
            return EXIT_UNREACHABLE
        status = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"tokenproxy status: cannot read {url}/status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0 if status.get("healthy") else EXIT_UNHEALTHY
