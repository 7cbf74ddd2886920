"""The status page the admin listener serves on ``/``: what ``/status`` says, for a person.

:func:`render_status_page` turns the ``/status`` dict (built by ``AdminServer.status``) into
one self-contained HTML page: server-rendered, inline CSS, no script, refreshed by the browser
every few seconds (``<meta http-equiv="refresh">``). It shows the overall health and the time,
then per account its state, the access and refresh token time left as bars, the sessions
held against ``max_live_tokens``, the last renewal and, when the account is not healthy, its
last error and the hint saying what to do; then each account's API rate-limit budgets and the
WebSocket (events) connections when the listener has them (summed over every process sharing
the store), and the processes themselves: each worker and replica that reported within the
window (``ops/processes.py``), with its last report's age, requests and sockets.

Every value is HTML-escaped: account names come from the config, errors and hints may quote
the platform. The status dict holds no token or secret and this page adds none. Elements carry
stable ``id``/``data-*`` attributes (``data-account``, ``data-state``, ``data-role``) for tests
and scrapers. The page is served behind the same admin-token rule as ``/metrics``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

REFRESH_SECONDS = 5
# The bars' full width: the platform's usual lifetimes (access 1 h, refresh 7 days); a longer
# time left shows a full bar. The text beside the bar gives the exact figure.
ACCESS_SCALE = 3600.0
REFRESH_SCALE = 7 * 86400.0
LOW_FRACTION = 0.1  # a bar below this share of its scale is drawn as "low"
GOOD_STATES = ("healthy", "idle", "refreshing")  # as admin.HEALTHY_STATES
# states in which the tokens held, whatever time they have left, do not work: greyed bars
DEAD_STATES = ("reauth_required", "misconfigured")

CSS = """
:root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --info: #0969da; --muted: #6e7781;
        --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1f2328; background: #fff; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 20px;
         padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { font-size: 20px; margin: 0; }
header .meta { color: var(--muted); }
main { padding: 8px 24px 24px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted);
     font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.name { font-weight: 600; word-break: break-all; }
.grant { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; background: var(--muted); white-space: nowrap; }
.badge.state-healthy, .badge.overall-ok { background: var(--ok); }
.badge.state-refreshing { background: var(--info); }
.badge.state-backing_off { background: var(--warn); }
.badge.state-reauth_required, .badge.state-misconfigured, .badge.overall-bad {
  background: var(--bad); }
.badge.process-healthy { background: var(--ok); }
.badge.process-draining { background: var(--warn); }
.badge.process-unhealthy { background: var(--bad); }
.bar { display: flex; align-items: center; gap: 8px; min-width: 170px; }
.track { flex: 1; height: 10px; border-radius: 5px; background: #eaeef2; overflow: hidden;
         min-width: 90px; }
.fill { display: block; height: 100%; background: var(--ok); }
.bar.low .fill { background: var(--warn); }
.bar.none .fill { width: 0; }
.left { min-width: 56px; text-align: right; font-variant-numeric: tabular-nums; }
.bar.none .left, .bar.unusable .left { color: var(--muted); }
.bar.unusable .fill { background: repeating-linear-gradient(45deg, #d0d7de 0 6px,
                                                           #eaeef2 6px 12px); }
tr.attention td { background: #fff5f5; }
.error { color: var(--bad); word-break: break-word; }
.hint { margin-top: 4px; word-break: break-word; }
.hint::before { content: "What to do: "; font-weight: 600; }
.muted { color: var(--muted); }
footer { padding: 12px 24px; color: var(--muted); font-size: 12px;
         border-top: 1px solid var(--line); }
"""


def format_duration(seconds: float | None) -> str:
    """``3d4h``, ``2h5m``, ``4m10s``, ``9s``; ``-`` for None (as ``tokenproxy status``)."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


def _e(value: object) -> str:
    """Any value as escaped HTML text (also safe inside a double-quoted attribute)."""
    return escape("" if value is None else str(value), quote=True)


def _slug(name: str, taken: set[str]) -> str:
    base = "account-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _bar(role: str, seconds: Any, scale: float, usable: bool = True) -> str:
    left = _number(seconds)
    if left is not None and not usable:  # e.g. a refresh token the platform refused
        return (f'<div class="bar unusable" data-role="{role}" data-seconds="{int(left)}" '
                f'title="{role}: {_e(format_duration(left))} left on paper, but the platform '
                f'refused it"><span class="track"><span class="fill" style="width:100%">'
                f'</span></span><span class="left">unusable</span></div>')
    if left is None:
        return (f'<div class="bar none" data-role="{role}" data-seconds="">'
                f'<span class="track"><span class="fill"></span></span>'
                f'<span class="left">-</span></div>')
    fraction = min(1.0, max(0.0, left / scale))
    low = " low" if fraction < LOW_FRACTION else ""
    return (f'<div class="bar{low}" data-role="{role}" data-seconds="{int(left)}" '
            f'title="{role}: {_e(format_duration(left))} left">'
            f'<span class="track"><span class="fill" style="width:{fraction * 100:.1f}%">'
            f'</span></span><span class="left">{_e(format_duration(left))}</span></div>')


def _ago(now: float, then: Any) -> str:
    when = _number(then)
    return "-" if when is None else f"{format_duration(now - when)} ago"


def _account_row(account: Mapping[str, Any], slug: str, now: float) -> str:
    name = str(account.get("account", ""))
    state = str(account.get("state", "unknown"))
    attention = state not in GOOD_STATES
    usable = state not in DEAD_STATES
    since = _number(account.get("state_since"))
    problem = ""
    if attention or account.get("last_error"):
        if account.get("last_error"):
            problem += f'<div class="error" data-role="error">{_e(account["last_error"])}</div>'
        if account.get("hint") and state != "healthy":
            problem += f'<div class="hint" data-role="hint">{_e(account["hint"])}</div>'
    sessions = f"{_e(account.get('live_sessions', 0))}/{_e(account.get('max_live_tokens', 1))}"
    return (
        f'<tr id="{_e(slug)}" class="account{" attention" if attention else ""}" '
        f'data-account="{_e(name)}" data-state="{_e(state)}">'
        f'<td><div class="name">{_e(name)}</div>'
        f'<div class="grant">{_e(account.get("grant", ""))}</div></td>'
        f'<td><span class="badge state-{_e(state)}" data-role="state">{_e(state)}</span>'
        + (f'<div class="muted" data-role="state-since">for '
           f'{_e(format_duration(now - since))}</div>' if since is not None else "")
        + f'</td><td>{_bar("access", account.get("access_expires_in"), ACCESS_SCALE, usable)}'
        f'</td><td>{_bar("refresh", account.get("refresh_expires_in"), REFRESH_SCALE, usable)}'
        '</td>'
        f'<td class="num" data-role="sessions">{sessions}</td>'
        f'<td data-role="last-refresh">{_e(_ago(now, account.get("last_refresh")))}</td>'
        f'<td data-role="problem">{problem or "<span class=muted>-</span>"}</td></tr>')


def _rate_limits(accounts: Iterable[Mapping[str, Any]], slugs: Mapping[int, str]) -> str:
    parts: list[str] = []
    for index, account in enumerate(accounts):
        groups = account.get("rate_limits") or []
        if not groups:
            continue
        rows = []
        for g in groups:
            remaining = g.get("remaining")
            penalty = _number(g.get("penalty_left")) or 0.0
            rows.append(
                f'<tr data-group="{_e(g.get("group"))}"><td>{_e(g.get("group"))}</td>'
                f'<td class="num" data-role="used">{_e(g.get("used"))}/{_e(g.get("limit"))}'
                f'</td><td class="num">{_e(format_duration(_number(g.get("window"))))}</td>'
                f'<td class="num">{"-" if remaining is None else _e(remaining)}</td>'
                f'<td class="num">{_e(g.get("queued", 0))}</td>'
                f'<td class="num">{_e(format_duration(penalty)) if penalty else "-"}</td></tr>')
        name = str(account.get("account", ""))
        parts.append(
            f'<h3>{_e(name)}</h3><table class="rate-limits" id="rate-{_e(slugs[index])}" '
            f'data-account="{_e(name)}"><thead><tr><th>group</th><th class="num">used/limit'
            f'</th><th class="num">window</th><th class="num">platform remaining</th>'
            f'<th class="num">queued</th><th class="num">penalty</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')
    if not parts:
        return ('<section id="rate-limits"><h2>API rate-limit budgets</h2>'
                '<p class="muted">No API group seen yet (or the governor is off).</p></section>')
    return f'<section id="rate-limits"><h2>API rate-limit budgets</h2>{"".join(parts)}</section>'


def _websockets(events: Mapping[str, Any]) -> str:
    accounts: Mapping[str, Mapping[str, Any]] = events.get("accounts") or {}
    rows = [
        f'<tr data-account="{_e(name)}"><td class="name">{_e(name)}</td>'
        f'<td class="num" data-role="app-sockets">{_e(e.get("app_sockets", 0))}</td>'
        f'<td class="num">{_e(e.get("app_sessions", 0))}</td>'
        f'<td class="num" data-role="upstream-sockets">{_e(e.get("upstream_sockets", 0))}</td>'
        f'<td class="num" data-role="filters">{_e(e.get("subscribed_filters", 0))}</td></tr>'
        for name, e in accounts.items()]
    table = (f'<table id="websocket-accounts"><thead><tr><th>account</th>'
             f'<th class="num">app sockets</th><th class="num">app sessions</th>'
             f'<th class="num">platform sockets</th><th class="num">filters</th></tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>' if rows else
             '<p class="muted">No account has a WebSocket channel yet.</p>')
    return (f'<section id="websockets"><h2>WebSocket connections</h2>'
            f'<p>App sockets open: <strong data-role="app-sockets-total">'
            f'{_e(events.get("app_sockets", 0))}</strong></p>{table}</section>')


def _processes(status: Mapping[str, Any]) -> str:
    processes: list[Mapping[str, Any]] = list(status.get("processes") or [])
    rows = []
    for p in processes:
        me = bool(p.get("self"))
        state = str(p.get("state", "-"))
        age = "now" if me else f"{format_duration(_number(p.get('age')))} ago"
        worker = "-" if p.get("worker") is None else p.get("worker")
        rows.append(
            f'<tr data-process="{_e(p.get("id"))}" data-self="{"true" if me else "false"}" '
            f'data-state="{_e(state)}"><td class="name">{_e(p.get("id"))}'
            + (' <span class="muted">(this one)</span>' if me else "")
            + f'</td><td data-role="process-host">{_e(p.get("host"))}</td>'
            f'<td class="num" data-role="process-pid">{_e(p.get("pid"))}</td>'
            f'<td class="num" data-role="process-worker">{_e(worker)}</td>'
            f'<td data-role="process-age">{_e(age)}</td>'
            f'<td class="num" data-role="process-served">{_e(p.get("served", 0))}</td>'
            f'<td class="num" data-role="process-in-flight">{_e(p.get("in_flight", 0))}</td>'
            f'<td class="num" data-role="process-app-sockets">{_e(p.get("app_sockets", 0))}'
            f'</td><td><span class="badge process-{_e(state)}" data-role="process-state">'
            f'{_e(state)}</span></td></tr>')
    if not status.get("processes_shared", True):
        note = "Only this process: its store (memory) is not shared with other processes."
    elif status.get("processes_error"):
        note = ("Only this process: the other processes' reports cannot be read: "
                f"{status['processes_error']}")
    else:
        note = (f"Every process that reported within the last "
                f"{format_duration(_number(status.get('processes_window')))}; the tables "
                "above sum their figures.")
    return (f'<section id="processes"><h2>Processes</h2>'
            f'<p class="muted" data-role="processes-note">{_e(note)}</p>'
            '<table id="process-table"><thead><tr><th>process</th><th>host</th>'
            '<th class="num">pid</th><th class="num">worker</th><th>last report</th>'
            '<th class="num">served</th><th class="num">in flight</th>'
            '<th class="num">app sockets</th><th>state</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def render_status_page(status: Mapping[str, Any], refresh: int = REFRESH_SECONDS) -> str:
    """The ``/status`` dict as one HTML page (refreshing itself every ``refresh`` seconds)."""
    now = _number(status.get("time")) or time.time()
    accounts: list[Mapping[str, Any]] = list(status.get("accounts") or [])
    taken: set[str] = set()
    slugs = {i: _slug(str(a.get("account", "")), taken) for i, a in enumerate(accounts)}
    # accounts needing a person first, each group in config order
    order = sorted(range(len(accounts)),
                   key=lambda i: str(accounts[i].get("state")) in GOOD_STATES)
    attention = [a for a in accounts if str(a.get("state")) not in GOOD_STATES]
    healthy = bool(status.get("healthy")) and not attention
    overall = ("all accounts healthy" if healthy else
               f"{len(attention)} of {len(accounts)} account(s) need attention")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    rows = "".join(_account_row(accounts[i], slugs[i], now) for i in order)
    events = status.get("events")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f'<title>tokenproxy: {_e(overall)}</title><style>{CSS}</style></head><body>'
        f'<header id="summary" data-healthy="{"true" if healthy else "false"}">'
        '<h1>tokenproxy status</h1>'
        f'<span id="overall" class="badge {"overall-ok" if healthy else "overall-bad"}">'
        f'{_e(overall)}</span>'
        f'<span class="meta"><time id="generated" datetime="{iso}">{stamp}</time> · '
        f'{len(accounts)} account(s)'
        + (f' · <span id="process-count">{len(status["processes"])}</span> process(es)'
           if status.get("processes") else "")
        + f' · refreshes every {int(refresh)} s</span></header><main>'
        '<section id="accounts"><h2>Accounts</h2><table id="account-table"><thead><tr>'
        '<th>account</th><th>state</th><th>access token left</th><th>refresh token left</th>'
        '<th class="num">sessions</th><th>last refresh</th><th>last error / what to do</th>'
        f'</tr></thead><tbody>{rows}</tbody></table></section>'
        + _rate_limits(accounts, slugs)
        + (_websockets(events) if isinstance(events, Mapping) else "")
        + (_processes(status) if status.get("processes") else "")
        + '</main><footer>Served by the admin listener (<code>/status</code> has the same data '
        'as JSON). Bars: access time left against 1 h, refresh against 7 days. No token is ever '
        'shown.</footer></body></html>\n')


def render_unauthorized_page() -> str:
    """The 401 answer to a browser on ``/`` without the admin token."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>tokenproxy: unauthorized</title><style>{CSS}</style></head><body>'
        '<header><h1>tokenproxy status</h1>'
        '<span class="badge overall-bad">401 unauthorized</span></header><main>'
        '<p>This listener requires <code>Authorization: Bearer &lt;token&gt;</code>, the token in '
        'the environment variable named by <code>[proxy] admin_token_env</code> (as '
        '<code>/metrics</code> and <code>/status</code> do). A browser does not send it by '
        'itself: put the page behind a proxy that adds the header, or read the same data with '
        '<code>tokenproxy status</code>.</p></main></body></html>\n')
