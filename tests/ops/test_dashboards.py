"""Tests of the Grafana dashboards and Prometheus alert rules in dashboards/: the committed JSON
is what generate.py builds, panels and queries are well-formed, every metric they read is one
the proxy exports, every alert carries its runbook, and promtool accepts the rules and passes
their unit tests (each alert fires in some case and stays quiet in another).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from proxy_addon.ops.metrics import EXPORTED
from tests.support import promql

PROMTOOL = Path("/usr/bin/promtool")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline"}
SEVERITIES = {"page", "ticket"}
REQUIRED_ALERTS = {
    "TokenproxyAccountReauthRequired", "TokenproxyRefreshFailures",
    "TokenproxyRefreshTokenExpiringSoon", "TokenproxySessionsOverBudget",
    "TokenproxySessionsLost", "TokenproxyToken401Rate", "TokenproxyReplayFailures",
    "TokenproxyTokenEndpointRateLimited", "TokenproxyStoreDown",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tokenproxy_dashboards_generate", promql.DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> list[dict[str, Any]]:
    return [promql.load_json(path) for path in promql.dashboard_files()]


def account_dashboard() -> dict[str, Any]:
    (found,) = [d for d in dashboards() if d["uid"] == "tokenproxy-account"]
    return found


def exported(name: str) -> bool:
    """Whether the proxy exports ``name`` (a histogram's series by their base name)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in EXPORTED:
            return True
    return name in EXPORTED


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run `make debs` (installs the prometheus package, "
                    "which brings promtool)")
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120,
                          check=False)


# -- dashboards -------------------------------------------------------------------------------

def test_committed_dashboards_are_what_generate_builds() -> None:
    generate = load_generator()
    expected = {generate.OVERVIEW_FILE: generate.build_overview(),
                generate.ACCOUNT_FILE: generate.build_account()}
    assert promql.dashboard_files() == sorted(expected)
    for path, model in expected.items():
        assert path.read_text(encoding="utf-8") == generate.render(model), (
            f"{path.name} differs from what dashboards/generate.py builds: "
            "run `.venv/bin/python dashboards/generate.py`")


@pytest.mark.parametrize("path", promql.dashboard_files(), ids=lambda p: p.name)
def test_dashboard_panels_are_well_formed(path: Path) -> None:
    dashboard = promql.load_json(path)
    assert dashboard["schemaVersion"] == 39
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    all_panels = list(promql.panels(dashboard))
    assert all_panels
    ids = [p.get("id") for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel["type"] in PANEL_TYPES, where
        assert panel.get("datasource") == DATASOURCE, where
        grid = panel.get("gridPos", {})
        assert {"h", "w", "x", "y"} <= grid.keys(), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{where} overlaps another panel"
        cells |= covered
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        targets = panel.get("targets", [])
        assert targets, f"{where} has no query"
        for target in targets:
            assert target.get("expr", "").strip(), where
            assert target.get("datasource") == DATASOURCE, where
            assert target.get("refId"), where


def test_units_say_what_is_measured() -> None:
    for dashboard in dashboards():
        for panel in promql.panels(dashboard):
            exprs = " ".join(t["expr"] for t in panel["targets"])
            unit = panel["fieldConfig"]["defaults"]["unit"]
            if panel["type"] == "table":  # one unit per column
                units = {p["value"] for o in panel["fieldConfig"]["overrides"]
                         for p in o["properties"] if p["id"] == "unit"}
                assert "remaining_seconds" not in exprs or "s" in units, panel["title"]
            elif "histogram_quantile" in exprs or "remaining_seconds" in exprs:
                assert unit == "s", panel["title"]
            elif panel["type"] == "timeseries" and "rate(" in exprs:
                assert unit in {"reqps", "ops"}, panel["title"]


def test_account_dashboard_filters_every_query_by_account() -> None:
    dashboard = account_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    account = variables["account"]
    assert account["type"] == "query"
    assert account["query"] == "label_values(tokenproxy_account_state, account)"
    assert account["datasource"] == DATASOURCE
    queries = [(p["title"], t["expr"]) for p in promql.panels(dashboard) for t in p["targets"]]
    assert queries
    for title, expr in queries:
        assert 'account=~"$account"' in expr, f"{title!r} does not filter by $account: {expr}"


def test_counter_windows_follow_grafana() -> None:
    for dashboard_title, panel_title, expr in promql.panel_queries():
        for window in re.findall(r"\[([^\]]*)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, (dashboard_title, panel_title)


def test_every_query_expands_to_valid_promql(tmp_path: Path) -> None:
    """Every panel query, its Grafana variables expanded, is PromQL promtool accepts."""
    queries = promql.panel_queries()
    rules = []
    for number, (dashboard_title, panel_title, expr) in enumerate(queries):
        expanded = promql.expand(expr, "main")
        assert "$" not in expanded, (dashboard_title, panel_title, expanded)
        rules.append({"record": f"tokenproxy_dashboard_query:{number}", "expr": expanded})
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_expand_replaces_grafana_variables() -> None:
    expr = ('sum(rate(x{account=~"$account"}[$__rate_interval])) + y{a="${account}"}'
            ' + increase(z[$__range]) + w[$__interval]')
    assert promql.expand(expr) == (
        'sum(rate(x{account=~".+"}[1m])) + y{a=".+"} + increase(z[5m]) + w[15s]')
    assert promql.expand('x{account=~"$account"}', "main") == 'x{account=~"main"}'
    assert promql.expand('label_replace(x, "a", "$1", "b", "(.*)")') == (
        'label_replace(x, "a", "$1", "b", "(.*)")')
    with pytest.raises(ValueError, match="nope"):
        promql.expand("x[$nope]")


# -- metric names -----------------------------------------------------------------------------

def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (dashboard panel, variable or alert)."""
    used: dict[str, set[str]] = {}
    sources = [(f"{d}: {p}", e) for d, p, e in promql.panel_queries()]
    sources += [(f"{d}: ${v}", q) for d, v, q in promql.variable_queries()]
    sources += [(f"alert {r['alert']}", r["expr"]) for r in promql.alert_rules()]
    for where, expr in sources:
        for name in promql.metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def test_every_referenced_metric_is_exported() -> None:
    used = referenced_metrics()
    assert len(used) >= 15, sorted(used)  # not vacuous: the dashboards read most metrics
    unknown = {name: sorted(where) for name, where in used.items() if not exported(name)}
    assert not unknown, f"metrics the proxy does not export: {unknown}"


def test_metric_check_catches_unknown_names() -> None:
    names = promql.metric_names(
        'sum by (account) (rate(tokenproxy_nope_total{account=~"$account"}[$__rate_interval]))'
        " / on (account) max by (account) (tokenproxy_live_sessions)")
    assert names == {"tokenproxy_nope_total", "tokenproxy_live_sessions"}
    assert not exported("tokenproxy_nope_total")
    assert not exported("tokenproxy_nope_bucket")
    assert not exported("tokenproxy_requests")  # the counter is exported with _total
    assert exported("tokenproxy_token_wait_seconds_bucket")
    assert exported("tokenproxy_live_sessions")


def test_metric_names_skip_labels_strings_and_grouping() -> None:
    expr = ('sum by (tokenproxy_label) (tokenproxy_a_total{tokenproxy_l="tokenproxy_v"}) '
            "/ ignoring (tokenproxy_x) group_left (tokenproxy_y) "
            '{__name__="tokenproxy_b"} # tokenproxy_in_a_comment\n'
            '+ label_replace(tokenproxy_c, "dst", "tokenproxy_d", "src", "(.*)") '
            '+ {__name__=~"tokenproxy_regex.*"}')
    assert promql.metric_names(expr) == {"tokenproxy_a_total", "tokenproxy_b", "tokenproxy_c"}


# -- alert rules ------------------------------------------------------------------------------

def test_alerts_carry_severity_and_runbook() -> None:
    rules = promql.alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"].get("severity") in SEVERITIES, name
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name} has no {key}"
        assert len(annotations["runbook"]) > 100, f"{name}: runbook too short"
        assert re.fullmatch(r"\d+m", rule["for"]) and 1 <= int(rule["for"][:-1]) <= 15, name
        if "by (account)" in rule["expr"]:
            assert "{{ $labels.account }}" in annotations["description"], name


def test_runbooks_name_the_operator_commands() -> None:
    runbooks = "\n".join(r["annotations"]["runbook"] for r in promql.alert_rules())
    for needle in ("tokenproxy status", "tokenproxy authorize ACCOUNT", "OAU-153"):
        assert needle in runbooks


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(promql.ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(promql.ALERTS_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    document = yaml.safe_load(promql.ALERTS_TEST_FILE.read_text(encoding="utf-8"))
    assert document["rule_files"] == [promql.ALERTS_FILE.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in promql.alert_rules()}
    assert not names - firing, f"alerts no test makes fire: {sorted(names - firing)}"
    assert not names - quiet, f"alerts no test keeps quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, "tests name alerts the rule file does not have"


# -- queries on two replicas ------------------------------------------------------------------

REPLICA_SERIES = [
    # main: healthy on replica a, backing_off on b; other: idle on both.
    *[(f'tokenproxy_account_state{{instance="{i}",account="{a}",state="{s}"}}', v)
      for i, a, s, v in (
          ("a", "main", "healthy", "1x80"), ("a", "main", "backing_off", "0x80"),
          ("b", "main", "healthy", "0x80"), ("b", "main", "backing_off", "1x80"),
          ("a", "other", "idle", "1x80"), ("b", "other", "idle", "1x80"))],
    ('tokenproxy_refresh_token_remaining_seconds{instance="a",account="main"}', "3000x80"),
    ('tokenproxy_refresh_token_remaining_seconds{instance="b",account="main"}', "0x80"),
    ('tokenproxy_live_sessions{instance="a",account="main"}', "1x80"),
    ('tokenproxy_live_sessions{instance="b",account="main"}', "1x80"),
    *[(f'tokenproxy_token_endpoint_calls_total{{instance="{i}",account="main",'
       f'grant="jwt",outcome="success"}}', "0+15x80") for i in "ab"],
]

# (dashboard title, panel title, target index, account) -> expected samples at 15m.
EXPECTED_SAMPLES: list[tuple[str, str, int, str, list[tuple[str, float]]]] = [
    ("tokenproxy - overview", "Account state", 0, ".+",
     [('{account="main"}', 3), ('{account="other"}', 0)]),
    ("tokenproxy - account", "State", 0, "main", [('{account="main"}', 3)]),
    ("tokenproxy - account", "Refresh token time left", 0, "main", [('{account="main"}', 3000)]),
    ("tokenproxy - account", "Live sessions vs budget", 0, "main", [('{account="main"}', 1)]),
    ("tokenproxy - overview", "Token endpoint calls by outcome", 0, ".+",
     [('{outcome="success"}', 2)]),
]


def test_queries_show_replicas_as_one_account(tmp_path: Path) -> None:
    """Key panels, run by promtool on two replicas' series: one series per account, the worst
    state, the shortest time left, rates summed."""
    by_panel = {(d["title"], p["title"]): [t["expr"] for t in p["targets"]]
                for d in dashboards() for p in promql.panels(d)}
    cases = [{"expr": promql.expand(by_panel[(dash, title)][index], account),
              "eval_time": "15m",
              "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}
             for dash, title, index, account, samples in EXPECTED_SAMPLES]
    test_file = tmp_path / "queries.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [], "tests": [{
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in REPLICA_SERIES],
        "promql_expr_test": cases}]}))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
