"""Builds tokenproxy's two Grafana dashboards (overview and per-account drill-down) as JSON models
and writes them next to this file: ``python dashboards/generate.py``.

The committed JSON files must equal what this script builds (tests/test_dashboards.py checks),
so edit the panels here and regenerate. Every query aggregates across replicas (``sum by
(account)``, ``max by (account)`` ...): each replica exports its own series, Prometheus adds
``instance``, and an account must show as one account however many replicas serve it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
OVERVIEW_FILE = HERE / "tokenproxy-overview.json"
ACCOUNT_FILE = HERE / "tokenproxy-account.json"
OVERVIEW_UID = "tokenproxy-overview"
ACCOUNT_UID = "tokenproxy-account"

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
ACCOUNT = 'account=~"$account"'
GRID_WIDTH = 24

# Account states, worst last: the state timelines show the worst state any replica reports.
STATES: tuple[tuple[str, str], ...] = (
    ("idle", "text"),
    ("healthy", "green"),
    ("refreshing", "blue"),
    ("backing_off", "orange"),
    ("misconfigured", "red"),
    ("reauth_required", "dark-red"),
)


# -- PromQL -----------------------------------------------------------------------------------

def sel(*matchers: str) -> str:
    """A label selector body: ``sel('a="b"', 'c=~"d"')`` -> ``{a="b",c=~"d"}`` (or "")."""
    present = [m for m in matchers if m]
    return "{" + ",".join(present) + "}" if present else ""


def state_code(account: str = "") -> str:
    """Each account's state as a number (index in STATES), the worst across replicas."""
    parts = []
    for code, (name, _) in enumerate(STATES):
        state = f'state="{name}"'
        parts.append(f"tokenproxy_account_state{sel(account, state)} * {code}")
    return "max by (account) (\n  " + "\n  or ".join(parts) + "\n)"


def rate(metric: str, by: str, *matchers: str) -> str:
    return f"sum by ({by}) (rate({metric}{sel(*matchers)}[{RATE}]))"


def quantile(q: float, histogram: str, by: str, *matchers: str) -> str:
    inner = f"rate({histogram}_bucket{sel(*matchers)}[{RATE}])"
    return f"histogram_quantile({q}, sum by ({by}) ({inner}))"


def in_range(metric: str, by: str, *matchers: str) -> str:
    """How much a counter grew over the dashboard's time range."""
    return f"sum by ({by}) (increase({metric}{sel(*matchers)}[$__range]))"


# -- panels -----------------------------------------------------------------------------------

def target(expr: str, legend: str = "__auto", *, instant: bool = False,
           table: bool = False) -> Json:
    t: Json = {"datasource": DATASOURCE, "editorMode": "code", "expr": expr,
               "legendFormat": legend, "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def state_mappings() -> list[Json]:
    return [{"type": "value", "options": {
        str(code): {"text": name, "color": color, "index": code}
        for code, (name, color) in enumerate(STATES)}}]


def up_mappings() -> list[Json]:
    return [{"type": "value", "options": {
        "0": {"text": "down", "color": "red", "index": 0},
        "1": {"text": "up", "color": "green", "index": 1}}}]


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps]}


def panel(kind: str, title: str, targets: list[Json], *, unit: str = "short",
          description: str = "", width: int = 12, height: int = 8,
          defaults: Json | None = None, options: Json | None = None,
          overrides: list[Json] | None = None,
          transformations: list[Json] | None = None) -> Json:
    """One panel; ``gridPos`` and ``id`` are filled in by :func:`dashboard`."""
    field_defaults: Json = {"unit": unit, "color": {"mode": "palette-classic"}}
    if kind == "timeseries":
        field_defaults["min"] = 0
        field_defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                    "showPoints": "never", "spanNulls": False,
                                    "stacking": {"mode": "none", "group": "A"}}
        panel_options: Json = {
            "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        field_defaults["color"] = {"mode": "thresholds"}
        panel_options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background", "graphMode": "none", "justifyMode": "auto",
            "orientation": "auto", "textMode": "value_and_name", "wideLayout": True}
    elif kind == "state-timeline":
        field_defaults["color"] = {"mode": "thresholds"}
        field_defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
        panel_options = {"showValue": "auto", "mergeValues": True, "alignValue": "left",
                         "rowHeight": 0.9, "tooltip": {"mode": "single", "sort": "none"},
                         "legend": {"showLegend": False, "displayMode": "list",
                                    "placement": "bottom"}}
    elif kind == "table":
        field_defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}}
        panel_options = {"showHeader": True, "cellHeight": "sm",
                         "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    else:
        raise ValueError(f"unknown panel type {kind!r}")
    field_defaults.setdefault("thresholds", thresholds((None, "green")))
    field_defaults.update(defaults or {})
    panel_options.update(options or {})
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    result: Json = {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": field_defaults, "overrides": overrides or []},
        "options": panel_options,
        "targets": [{**t, "refId": refs[i]} for i, t in enumerate(targets)],
    }
    if transformations:
        result["transformations"] = transformations
    return result


def timeseries(title: str, targets: list[Json], unit: str, description: str,
               width: int = 12, **kwargs: Any) -> Json:
    return panel("timeseries", title, targets, unit=unit, description=description,
                 width=width, **kwargs)


def latency(title: str, histogram: str, by: str, description: str, *matchers: str,
            width: int = 12, prefix: str = "") -> Json:
    targets = [target(quantile(q, histogram, by, *matchers), f"{prefix}p{round(q * 100)}")
               for q in (0.5, 0.99)]
    return timeseries(title, targets, "s", description, width=width)


def sessions_vs_budget(account: str = "", width: int = 12) -> Json:
    dashed = {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
    return timeseries(
        "Live sessions vs budget",
        [target(f"max by (account) (tokenproxy_live_sessions{sel(account)})", "{{account}} live"),
         target(f"max by (account) (tokenproxy_max_live_sessions{sel(account)})",
                "{{account}} budget")],
        "short", "Platform sessions the account holds (highest across replicas) against its "
        "budget, max_live_tokens (dashed). The platform keeps 5 sessions per user+app.",
        width=width, overrides=[{"matcher": {"id": "byRegexp", "options": ".* budget"},
                                 "properties": [dashed]}])


def refresh_left(account: str = "", width: int = 12) -> Json:
    expr = f"min by (account) (tokenproxy_refresh_token_remaining_seconds{sel(account)} > 0 < 1e9)"
    return timeseries(
        "Refresh token time left", [target(expr, "{{account}}")], "s",
        "Shortest time any replica's refresh token has left. Accounts without one, or with one "
        "that never expires, are not drawn. Traffic rotates it; quiet accounts are kept alive "
        "about 36 hours before it expires.", width=width,
        defaults={"thresholds": thresholds((None, "red"), (86400, "green")),
                  "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                             "showPoints": "never", "spanNulls": False,
                             "thresholdsStyle": {"mode": "line"}}})


def state_timeline(title: str, account: str = "", height: int = 6) -> Json:
    return panel("state-timeline", title, [target(state_code(account), "{{account}}")],
                 description="Each account's state; with several replicas the worst one.",
                 width=GRID_WIDTH, height=height, defaults={"mappings": state_mappings()})


def events_sockets(account: str = "", width: int = 12) -> Json:
    return timeseries(
        "Events: WebSockets open",
        [target(f"sum by (account) (tokenproxy_events_app_sockets{sel(account)})",
                "{{account}} apps"),
         target(f"sum by (account) (tokenproxy_events_upstream_sockets{sel(account)})",
                "{{account}} platform")],
        "short", "Apps' WebSockets open on the proxy and the proxy's sockets to the platform's "
        "gateway, summed over replicas (each replica keeps its own, at most [events] "
        "upstream_sockets per account). Apps but no platform socket for minutes: "
        "TokenproxyEventsUpstreamDown.", width=width)


def events_connects(account: str = "", width: int = 12) -> Json:
    by, legend = ("account, outcome", "{{account}} {{outcome}}") if account else (
        "outcome", "{{outcome}}")
    colors = {"lost": "red", "error": "orange"}
    return timeseries(
        "Events: platform socket connects by outcome",
        [target(rate("tokenproxy_events_upstream_connects_total", by, account), legend)],
        "ops", "new (first connect), recovered (recoveryState Successful after a drop), lost "
        "(the platform's session was gone: subscriptions re-created, buffered events lost, apps "
        "told recoveryState Failed; TokenproxyEventsRecoveryFailing), error (a connect attempt "
        "failed).", width=width,
        overrides=[{"matcher": {"id": "byRegexp", "options": f".*{outcome}"},
                    "properties": [{"id": "color",
                                    "value": {"mode": "fixed", "fixedColor": color}}]}
                   for outcome, color in colors.items()])


def events_relayed(account: str = "", width: int = 8) -> Json:
    by, legend = ("account, kind", "{{account}} {{kind}}") if account else ("kind", "{{kind}}")
    return timeseries(
        "Events relayed by kind",
        [target(rate("tokenproxy_events_relayed_total", by, account), legend)],
        "ops", "Notifications and REST-over-WebSocket answers (client_request) the proxy "
        "relayed to app sockets.", width=width)


def events_ws_tokens(account: str = "", width: int = 8) -> Json:
    by, legend = ("account, outcome", "{{account}} {{outcome}}") if account else (
        "outcome", "{{outcome}}")
    return timeseries(
        "Events: platform ws token calls by outcome",
        [target(rate("tokenproxy_events_ws_token_calls_total", by, account), legend)],
        "reqps", "POST /restapi/oauth/wstoken calls for the proxy's platform sockets (Auth "
        "rate-limit group, shared with the token endpoint): ok, rejected (token 401, renewed "
        "and retried), limited (429), error.", width=width)


# -- dashboards -------------------------------------------------------------------------------

def place(panels: list[Json]) -> list[Json]:
    """Number the panels and lay them out left to right, wrapping at the grid's width."""
    x = y = row_height = 0
    for number, p in enumerate(panels, start=1):
        grid = p["gridPos"]
        if x + grid["w"] > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        p["id"] = number
    return panels


def datasource_variable() -> Json:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
            "multi": False, "options": [], "refresh": 1, "regex": "", "skipUrlSync": False}


def account_variable() -> Json:
    query = "label_values(tokenproxy_account_state, account)"
    return {"name": "account", "label": "Account", "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "current": {}, "hide": 0,
            "includeAll": True, "allValue": ".+", "multi": True, "options": [],
            "refresh": 2, "regex": "", "skipUrlSync": False, "sort": 1}


def dashboard(uid: str, title: str, description: str, panels: list[Json],
              variables: list[Json]) -> Json:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"type": "dashboards", "tags": ["tokenproxy"], "asDropdown": False,
                   "includeVars": True, "keepTime": True, "title": "tokenproxy",
                   "icon": "external link", "targetBlank": False, "tooltip": "", "url": ""}],
        "panels": place(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["tokenproxy"],
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def accounts_table() -> Json:
    queries = [
        ("State", state_code(), None),
        ("Access token left", "min by (account) (tokenproxy_access_token_remaining_seconds)",
         "s"),
        ("Refresh token left",
         "min by (account) (tokenproxy_refresh_token_remaining_seconds > 0 < 1e9)", "s"),
        ("Live sessions", "max by (account) (tokenproxy_live_sessions)", None),
        ("Budget", "max by (account) (tokenproxy_max_live_sessions)", None),
        ("Since last renewal",
         "time() - max by (account) (tokenproxy_last_refresh_timestamp_seconds > 0)", "s"),
    ]
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    rename = {f"Value #{refs[i]}": name for i, (name, _, _) in enumerate(queries)}
    overrides: list[Json] = [
        {"matcher": {"id": "byName", "options": "State"},
         "properties": [{"id": "mappings", "value": state_mappings()},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
        {"matcher": {"id": "byName", "options": "account"},
         "properties": [{"id": "links", "value": [{
             "title": "Open the account's dashboard",
             "url": f"/d/{ACCOUNT_UID}/{ACCOUNT_UID}?var-account=${{__value.raw}}"
                    "&${datasource:queryparam}&${__url_time_range}"}]}]},
    ]
    overrides += [{"matcher": {"id": "byName", "options": name},
                   "properties": [{"id": "unit", "value": unit}]}
                  for name, _, unit in queries if unit]
    return panel(
        "table", "Accounts now", [target(expr, instant=True, table=True)
                                  for _, expr, _ in queries],
        description="Per account: worst state across replicas, shortest token time left, "
        "sessions, time since the last renewal. Click an account for its dashboard.",
        width=GRID_WIDTH, height=7, overrides=overrides,
        transformations=[{"id": "merge", "options": {}},
                         {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                        "renameByName": rename}}])


def build_overview() -> Json:
    """All accounts and replicas of a deployment at a glance."""
    bad = {"reauth_required": "red", "misconfigured": "red", "backing_off": "orange"}
    state_overrides = [{"matcher": {"id": "byName", "options": name},
                        "properties": [{"id": "thresholds",
                                        "value": thresholds((None, "green"), (1, color))}]}
                       for name, color in bad.items()]
    panels = [
        panel("stat", "Accounts per state",
              [target("sum by (state) (max by (account, state) (tokenproxy_account_state))",
                      "{{state}}")],
              description="How many accounts are in each state (an account counts in every "
              "state one of its replicas reports).", width=12, height=5,
              overrides=state_overrides),
        panel("stat", "Token store", [target("min by (backend) (tokenproxy_store_up)",
                                             "{{backend}}")],
              description="down as soon as one replica cannot reach the store.", width=6,
              height=5, defaults={"mappings": up_mappings(),
                                  "thresholds": thresholds((None, "red"), (1, "green"))}),
        panel("stat", "Replicas reporting",
              [target("count(max by (instance) (tokenproxy_store_up))", "replicas")],
              description="Proxy processes Prometheus scrapes.", width=6, height=5,
              defaults={"thresholds": thresholds((None, "red"), (1, "green"))}),
        state_timeline("Account state"),
        accounts_table(),
        refresh_left(),
        sessions_vs_budget(),
        timeseries("Token endpoint calls by outcome",
                   [target(rate("tokenproxy_token_endpoint_calls_total", "outcome"),
                           "{{outcome}}")],
                   "reqps", "Calls to the platform's token endpoint (logins and refreshes), "
                   "all accounts and replicas."),
        timeseries("Renewals by outcome",
                   [target(rate("tokenproxy_refreshes_total", "outcome"), "{{outcome}}")],
                   "ops", "refreshed, logged_in (a new session), adopted (another replica "
                   "renewed, this one took its tokens from the store), failed."),
        timeseries("Token 401s by code",
                   [target(rate("tokenproxy_upstream_token_errors_total", "code"), "{{code}}")],
                   "ops", "Token errors the platform answered to proxied requests; each is "
                   "renewed once and replayed.", width=8),
        timeseries("Replays by outcome",
                   [target(rate("tokenproxy_replays_total", "outcome"), "{{outcome}}")],
                   "ops", "Requests replayed after a token 401.", width=8),
        timeseries("Sessions lost by reason",
                   [target(rate("tokenproxy_sessions_lost_total", "reason"), "{{reason}}")],
                   "ops", "Sessions killed outside the proxy: revoked or evicted (OAU-213), "
                   "or a refresh token that died.", width=8),
        latency("Token endpoint latency", "tokenproxy_token_endpoint_duration_seconds", "le",
                "Duration of token-endpoint calls, all accounts.", width=8),
        timeseries("Token endpoint 429s",
                   [target(rate("tokenproxy_token_endpoint_rate_limited_total", "account"),
                           "{{account}}")],
                   "reqps", "Rate-limit answers (CMN-301) of the token endpoint by account.",
                   width=8),
        timeseries("Token wait p99 by account",
                   [target(quantile(0.99, "tokenproxy_token_wait_seconds", "account, le"),
                           "{{account}}")],
                   "s", "How long requests waited for a token renewal (99th percentile).",
                   width=8),
        timeseries("Requests by status class",
                   [target(rate("tokenproxy_requests_total", "status_class"),
                           "{{status_class}}")],
                   "reqps", "Answers to apps, all clients and replicas."),
        latency("Upstream latency", "tokenproxy_upstream_duration_seconds", "le",
                "Time from sending a request upstream to the first byte of its answer."),
        panel("state-timeline", "Token store per replica",
              [target("min by (instance, backend) (tokenproxy_store_up)",
                      "{{instance}} {{backend}}")],
              description="Whether each replica reaches the token store.", width=8,
              defaults={"mappings": up_mappings(),
                        "thresholds": thresholds((None, "red"), (1, "green"))}),
        timeseries("Token store errors by operation",
                   [target(rate("tokenproxy_store_operations_total", "backend, operation",
                                'outcome="error"'), "{{backend}} {{operation}}")],
                   "ops", "Failed store operations (load, compare_and_set, locks ...).",
                   width=8),
        latency("Store lock wait", "tokenproxy_store_lock_wait_seconds", "le",
                "Time a renewal waited for the account's lock or another replica's tokens.",
                width=8),
        timeseries("Platform 429s by group",
                   [target(rate("tokenproxy_rate_limit_platform_429_total", "group"),
                           "{{group}}")],
                   "reqps", "API calls the platform refused with 429 (should stay 0 with "
                   "[rate_limits] mode = \"enforce\": each one starts a penalty for the whole "
                   "group).", width=8),
        timeseries("Proxy 429s (rate limits) by client",
                   [target(rate("tokenproxy_rate_limit_refused_total", "client"),
                           "{{client}}")],
                   "reqps", "Requests the proxy answered 429 TPX-RATE-LIMITED: their group's "
                   "budget stayed used up (or in a penalty) for max_wait.", width=8),
        latency("Rate-limit wait", "tokenproxy_rate_limit_wait_seconds", "group, le",
                "How long requests waited for their group's budget (those let through at "
                "once are not counted).", width=8, prefix="{{group}} "),
        # Events (WebSocket subscriptions, issue 18)
        events_sockets(),
        events_connects(),
        events_relayed(),
        events_ws_tokens(),
        timeseries("Events: refused app tokens and frames by reason",
                   [target(rate("tokenproxy_events_app_ws_tokens_total", "outcome",
                                'outcome!="issued"'), "token {{outcome}}"),
                    target(rate("tokenproxy_events_refused_frames_total", "reason"),
                           "frame {{reason}}")],
                   "ops", "Socket upgrades the proxy refused by the app's ws token (missing, "
                   "unknown, expired, in_use, busy) and app frames answered with an error or "
                   "a close (malformed, too_big, subscribe_rate, busy, slow_reader, "
                   "oauth_route ...), all replicas.", width=8),
    ]
    return dashboard(OVERVIEW_UID, "tokenproxy - overview",
                     "Token health of every account tokenproxy manages, all replicas.",
                     panels, [datasource_variable()])


def build_account() -> Json:
    """Drill-down into one or more accounts (template variable ``account``)."""
    a = ACCOUNT
    panels = [
        state_timeline("State", a, height=5),
        panel("stat", "Current state", [target(state_code(a), "{{account}}")],
              description="Worst state across replicas.", width=6, height=4,
              defaults={"mappings": state_mappings()}),
        panel("stat", "Since last renewal",
              [target(f"time() - max by (account) "
                      f"(tokenproxy_last_refresh_timestamp_seconds{sel(a)} > 0)",
                      "{{account}}")],
              unit="s", description="Time since any replica last renewed the tokens.",
              width=6, height=4, defaults={"color": {"mode": "fixed", "fixedColor": "blue"}}),
        *[panel("stat", title, [target(in_range(metric, "account", a, *extra), "{{account}}",
                                       instant=True)],
                description=f"{description} in the dashboard's time range.", width=4,
                height=4, defaults={"thresholds": thresholds((None, "green"), (1, "orange"))})
          for title, metric, extra, description in (
              ("Failed renewals", "tokenproxy_refreshes_total", ('outcome="failed"',),
               "Renewals that failed"),
              ("Sessions lost", "tokenproxy_sessions_lost_total", (),
               "Sessions killed outside the proxy"),
              ("Token 401s", "tokenproxy_upstream_token_errors_total", (),
               "Token errors from the platform"))],
        timeseries("Access token time left",
                   [target(f"min by (account) "
                           f"(tokenproxy_access_token_remaining_seconds{sel(a)})",
                           "{{account}}")],
                   "s", "Shortest time any replica's access token has left (0: none usable). "
                   "Renewed shortly before it expires while the account has traffic."),
        refresh_left(a),
        timeseries("Renewals by outcome",
                   [target(rate("tokenproxy_refreshes_total", "account, outcome", a),
                           "{{account}} {{outcome}}")],
                   "ops", "refreshed, logged_in, adopted (from another replica), failed."),
        timeseries("Token endpoint calls by grant and outcome",
                   [target(rate("tokenproxy_token_endpoint_calls_total",
                                "account, grant, outcome", a),
                           "{{account}} {{grant}} {{outcome}}")],
                   "reqps", "Token-endpoint calls; outcome rejected means the platform "
                   "refused the grant (credentials or a dead session)."),
        timeseries("Token 401s by code",
                   [target(rate("tokenproxy_upstream_token_errors_total", "account, code", a),
                           "{{account}} {{code}}")],
                   "ops", "OAU-210 expired, OAU-128/129 invalid, OAU-213 not found (revoked "
                   "or evicted).", width=8),
        timeseries("Replays by outcome",
                   [target(rate("tokenproxy_replays_total", "account, outcome", a),
                           "{{account}} {{outcome}}")],
                   "ops", "Requests replayed after a token 401.", width=8),
        timeseries("Sessions lost by reason",
                   [target(rate("tokenproxy_sessions_lost_total", "account, reason", a),
                           "{{account}} {{reason}}")],
                   "ops", "Sessions killed outside the proxy.", width=8),
        sessions_vs_budget(a, width=8),
        latency("Token wait", "tokenproxy_token_wait_seconds", "account, le",
                "How long requests waited for a token renewal.", a, width=8,
                prefix="{{account}} "),
        latency("Token endpoint latency", "tokenproxy_token_endpoint_duration_seconds",
                "account, le", "Duration of token-endpoint calls.", a, width=8,
                prefix="{{account}} "),
        latency("Upstream latency", "tokenproxy_upstream_duration_seconds", "account, le",
                "Time from sending a request upstream to the first byte of its answer.", a,
                prefix="{{account}} "),
        timeseries("Token endpoint 429s",
                   [target(rate("tokenproxy_token_endpoint_rate_limited_total", "account", a),
                           "{{account}}")],
                   "reqps", "Rate-limit answers of the token endpoint (CMN-301)."),
        timeseries("Requests by client and status class",
                   [target(rate("tokenproxy_requests_total", "client, status_class", a),
                           "{{client}} {{status_class}}")],
                   "reqps", "Answers to the account's apps.", width=GRID_WIDTH),
        timeseries("API budget per group: used and limit",
                   [target(f"max by (account, group) (tokenproxy_rate_limit_used{sel(a)})",
                           "{{account}} {{group}} used"),
                    target(f"max by (account, group) (tokenproxy_rate_limit_limit{sel(a)})",
                           "{{account}} {{group}} limit")],
                   "short", "Requests of each rate-limit group in the current window (per "
                   "replica: the busiest) and the limit the platform's headers set.", width=8),
        timeseries("Requests waiting for the budget",
                   [target(f"sum by (account, group) (tokenproxy_rate_limit_queued{sel(a)})",
                           "{{account}} {{group}}")],
                   "short", "Requests queued (weighted fair) for their group's budget, all "
                   "replicas.", width=8),
        timeseries("Platform penalty left",
                   [target(f"max by (account, group) "
                           f"(tokenproxy_rate_limit_penalty_seconds{sel(a)})",
                           "{{account}} {{group}}")],
                   "s", "Seconds left of a platform 429 penalty: nothing of the group is sent "
                   "meanwhile.", width=8),
        # Events (WebSocket subscriptions, issue 18)
        events_sockets(a, width=6),
        events_connects(a, width=6),
        events_relayed(a, width=6),
        events_ws_tokens(a, width=6),
    ]
    return dashboard(ACCOUNT_UID, "tokenproxy - account",
                     "One account's tokens, renewals, sessions and traffic, all replicas.",
                     panels, [datasource_variable(), account_variable()])


def render(model: Json) -> str:
    """The file text for a dashboard model (what the committed JSON must equal)."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    for path, model in ((OVERVIEW_FILE, build_overview()), (ACCOUNT_FILE, build_account())):
        path.write_text(render(model), encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
