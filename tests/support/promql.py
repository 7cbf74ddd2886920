"""PromQL helpers for tests of the Grafana dashboards and alert rules in ``dashboards/``: where
they are, every query they run, Grafana variables expanded so a query runs in plain Prometheus,
and the ``tokenproxy_`` metric names a query reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
ALERTS_FILE = DASHBOARDS / "alerts.yml"
ALERTS_TEST_FILE = DASHBOARDS / "alerts.test.yml"
METRIC_PREFIX = "tokenproxy_"

# What Grafana's built-in variables become when a query runs in plain Prometheus.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "datasource": "prometheus",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<comment>\#[^\n]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>[{(\[])
  | (?P<close>[})\]])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

# Keywords followed by a parenthesised list of label names, not of expressions.
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def dashboard_files() -> list[Path]:
    """The dashboard JSON files, sorted."""
    return sorted(DASHBOARDS.glob("*.json"))


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard model, including those nested in rows."""
    stack = list(reversed(dashboard.get("panels", [])))
    while stack:
        panel = stack.pop()
        yield panel
        stack.extend(reversed(panel.get("panels", [])))


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) for every target of every panel."""
    found = []
    for path in dashboard_files():
        dashboard = load_json(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append((dashboard["title"], panel.get("title", ""), target.get("expr", "")))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, variable name, query) for every query template variable."""
    found = []
    for path in dashboard_files():
        dashboard = load_json(path)
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable.get("query", "")
                if isinstance(query, dict):
                    query = query.get("query", "")
                found.append((dashboard["title"], variable["name"], str(query)))
    return found


def alert_rules(path: Path = ALERTS_FILE) -> list[dict[str, Any]]:
    """Every alerting rule of a rule file: alert, expr, for, labels, annotations."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    rules = []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                rules.append({"alert": rule["alert"], "expr": str(rule["expr"]),
                              "for": str(rule.get("for", "0s")),
                              "labels": dict(rule.get("labels") or {}),
                              "annotations": dict(rule.get("annotations") or {})})
    return rules


def expand(expr: str, account: str = ".+") -> str:
    """``expr`` with Grafana's variables replaced so plain Prometheus can run it: ``$account``
    by ``account`` (a regex), ``$__rate_interval`` by 1m and so on (see BUILTINS). A variable
    this does not know raises ValueError; ``$1`` (a label_replace group) stays."""
    values = {**BUILTINS, "account": account}

    def one(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name.isdigit():
            return match.group(0)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(one, expr)


def metric_names(expr: str, prefix: str = METRIC_PREFIX) -> set[str]:
    """Metric names starting with ``prefix`` that a PromQL expression reads. Label names and
    values (inside ``{}``), label lists of by/without/on/ignoring/group_left/group_right,
    strings, comments and range/offset durations are not names; ``{__name__="..."}`` is."""
    names: set[str] = set()
    stack: list[str] = []  # open brackets: "{" matchers, "(" expressions, "L" label lists, "["
    previous_ident = ""
    pending_name_matcher = 0  # 1: saw __name__ inside {}, 2: then "=": next string is a name
    for match in _TOKEN.finditer(expr):
        kind, text = match.lastgroup, match.group()
        inside = stack[-1] if stack else ""
        if kind == "comment" or (kind == "other" and text.isspace()):
            continue
        if kind == "string":
            if pending_name_matcher == 2 and inside == "{":
                value = text[1:-1]
                if value.startswith(prefix):
                    names.add(value)
            pending_name_matcher = 0
        elif kind == "ident":
            if inside == "{":
                pending_name_matcher = 1 if text == "__name__" else 0
            elif inside not in ("L", "[") and text.startswith(prefix):
                names.add(text)
        elif kind == "open":
            if text == "(" and previous_ident in _LABEL_LIST_KEYWORDS and inside != "{":
                stack.append("L")
            else:
                stack.append(text)
        elif kind == "close":
            if stack:
                stack.pop()
        elif kind == "other" and inside == "{":
            pending_name_matcher = 2 if pending_name_matcher == 1 and text == "=" else 0
        previous_ident = text if kind == "ident" else ""
    return names
