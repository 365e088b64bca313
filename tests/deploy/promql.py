"""PromQL expressions the deploy assets use: alert rules, the dashboard, and the metric names in them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy.tools import module

# Grafana variables, replaced by values of the same type so the expression parses as Prometheus sees it.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$namespace": "ikiro",
    "$pod": ".*",
}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<expr>.+),\s*)?(?P<label>\w+)\)$")


def rule_expressions(rules_file: Path) -> dict[str, str]:
    """Alert or record name -> expression, for every rule of a Prometheus rules file."""
    yaml = module("yaml")
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {r.get("alert") or r["record"]: str(r["expr"]) for g in groups for r in g["rules"]}


def alerts(rules_file: Path) -> list[dict[str, Any]]:
    yaml = module("yaml")
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def dashboard_expressions(dashboard_file: Path) -> dict[str, str]:
    """Panel title/refId (and template variable) -> PromQL, Grafana variables substituted."""
    dash = json.loads(dashboard_file.read_text())
    out: dict[str, str] = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or []:
                out[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = grafana_to_promql(
                    target["expr"]
                )
            walk(panel.get("panels") or [])

    walk(dash.get("panels") or [])
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(query.strip())
        if m is None:
            out[f"variable {var['name']}"] = grafana_to_promql(query)
        elif m.group("expr"):
            out[f"variable {var['name']}"] = grafana_to_promql(m.group("expr"))
    return out


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (raises ValueError if it does not parse)."""
    pp = module("promql_parser")
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, pp.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                for m in node.matchers.matchers:
                    if m.name == "__name__":
                        names.add(m.value)

    pp.walk(pp.parse(expr), visit)
    return names
