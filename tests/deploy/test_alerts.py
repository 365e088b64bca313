"""Alert rules and dashboard: promtool accepts and tests them, queries parse, every alert is documented."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.deploy import promql
from tests.deploy.tools import (
    DASHBOARD_FILE,
    README,
    ROOT,
    RULES_FILE,
    RULES_TEST_FILE,
    module,
    run,
    tool,
)


def promtool_parses(expressions: dict[str, str], tmp_path: Path) -> str:
    """Run Prometheus' own parser over `expressions` (as recording rules); returns promtool's complaint."""
    yaml = module("yaml")
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(expressions.values())]
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse-only", "rules": rules}]}))
    out = run([tool("promtool", "PROMTOOL"), "check", "rules", str(path)])
    return "" if out.returncode == 0 else out.stdout + out.stderr


def test_promtool_checks_the_rules() -> None:
    out = run([tool("promtool", "PROMTOOL"), "check", "rules", str(RULES_FILE)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass() -> None:
    out = run(
        [tool("promtool", "PROMTOOL"), "test", "rules", str(RULES_TEST_FILE)], cwd=RULES_TEST_FILE.parent
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_severity_summary_runbook_and_a_test() -> None:
    yaml = module("yaml")
    tests = yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]
    fired = {
        t["alertname"]
        for case in tests
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")  # a case where it fires, not only one where it stays quiet
    }
    anchors = readme_anchors()
    for rule in promql.alerts(RULES_FILE):
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        assert rule.get("annotations", {}).get("summary"), name
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert "/deploy/k8s/README.md#" in url, name
        assert url.rsplit("#", 1)[1] in anchors, f"{name}: {url} points at no heading of deploy/k8s/README.md"
        assert name in fired, f"{name} has no promtool test case in which it fires"


def readme_anchors() -> set[str]:
    """GitHub-style anchors of the README's headings."""
    anchors = set()
    for line in README.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_rule_expression_parses() -> None:
    for name, expr in promql.rule_expressions(RULES_FILE).items():
        assert promql.metric_names(expr), name


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    expressions = promql.dashboard_expressions(DASHBOARD_FILE)
    assert len(expressions) > 30
    for name, expr in expressions.items():
        try:
            promql.metric_names(expr)
        except ValueError as err:
            pytest.fail(f"{name}: {err}: {expr}")
    assert promtool_parses(expressions, tmp_path) == ""


def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    broken = {"panel": "sum(rate(ikiro_edge_sockets_open[$__rate_interval])"}
    with pytest.raises(ValueError):
        promql.metric_names(promql.grafana_to_promql(broken["panel"]))
    assert "parse error" in promtool_parses(
        {k: promql.grafana_to_promql(v) for k, v in broken.items()}, tmp_path
    )


def test_dashboard_is_portable() -> None:
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert dash["uid"] == "ikiro-realtime"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"namespace", "pod"} <= set(variables)
    exprs = promql.dashboard_expressions(DASHBOARD_FILE)
    raw = [t["expr"] for p in dash["panels"] for t in p.get("targets") or []]
    assert all("[5m]" not in e and "[1m]" not in e for e in raw), "use $__rate_interval, not a fixed range"
    assert all('namespace="ikiro"' in e for k, e in exprs.items() if k.startswith("panel")), (
        "filter by $namespace"
    )
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_top_row_has_the_overview_stats() -> None:
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert dash["panels"][0]["type"] == "row"
    top = [p for p in dash["panels"] if p["gridPos"]["y"] == 1]
    assert len(top) >= 5 and all(p["type"] == "stat" for p in top)


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    module("yaml")
    out = run([sys.executable, str(ROOT / "deploy" / "scripts" / "gen_prometheusrule.py"), "--check"])
    assert out.returncode == 0, out.stderr
