"""The real services' /metrics: valid for promtool, and exporting every name the rules and dashboard use.

Each service runs as `python -m services.<name>` against the test NATS server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.deploy import promql
from tests.deploy.tools import DASHBOARD_FILE, RULES_FILE, run, tool
from tests.harness.proc import NatsServer
from tests.harness.proc import Service as Process


@dataclass(frozen=True)
class Service:
    module: str
    env: tuple[tuple[str, str], ...] = ()


SERVICES = (
    Service("services.edge_gateway"),
    Service("services.miniapp_gateway", (("SUPABASE_JWT_SECRET", "k8s-check-secret-of-at-least-32-bytes"),)),
    Service("services.command_dispatcher"),
)

# Metrics that come from elsewhere, by where: Prometheus itself, and prometheus-nats-exporter as the
# official NATS chart runs it (-jsz=all -prefix=nats; deploy/k8s/nats/values.yaml).
EXTERNAL = {
    "up": "Prometheus (scrape health)",
    "nats_consumer_num_pending": "prometheus-nats-exporter -jsz=all",
    "nats_server_total_message_bytes": "prometheus-nats-exporter -jsz=all",
    "nats_server_max_storage": "prometheus-nats-exporter -jsz=all",
}

TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$")
SUFFIXES = {
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "counter": ("", "_created"),
    "gauge": ("",),
}


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, labelled families with no child yet included."""
    names: set[str] = set()
    for line in exposition.splitlines():
        m = TYPE_LINE.match(line)
        if m:
            family, kind = m.groups()
            base = family.removesuffix("_total") if kind == "counter" else family
            for suffix in SUFFIXES.get(kind, ("",)):
                names.add(family if (kind == "counter" and suffix == "") else base + suffix)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (rule or dashboard panel)."""
    used: dict[str, set[str]] = {}
    sources = {**promql.rule_expressions(RULES_FILE), **promql.dashboard_expressions(DASHBOARD_FILE)}
    for where, expr in sources.items():
        for name in promql.metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def missing_names(used: dict[str, set[str]], exported: set[str]) -> list[str]:
    """Names used but exported by nothing (external ones aside)."""
    return sorted(
        f"{name} (used by {', '.join(sorted(used[name]))})"
        for name in used
        if name not in exported and name not in EXTERNAL
    )


@pytest.fixture(scope="module")
async def scrapes(broker: NatsServer, logs: Path) -> AsyncIterator[dict[str, str]]:
    """Each service's /metrics text, from the running service."""
    out: dict[str, str] = {}
    running: list[Process] = []
    try:
        for svc in SERVICES:
            proc = Process(svc.module, {"NATS_URL": broker.url, **dict(svc.env)}, logs)
            running.append(proc)
            proc.start()
            await proc.ready(timeout=30)
            async with aiohttp.ClientSession() as session, session.get(f"{proc.http}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
                out[svc.module] = await r.text()
        yield out
    finally:
        for proc in running:
            proc.stop()


@pytest.mark.parametrize("service", [s.module for s in SERVICES])
async def test_service_exports_valid_metrics(scrapes: dict[str, str], service: str) -> None:
    text = scrapes[service]
    out = run([tool("promtool", "PROMTOOL"), "check", "metrics"], input_text=text)
    assert out.returncode == 0, out.stdout + out.stderr
    names = exported_names(text)
    for required in (
        "ikiro_build_info",
        "ikiro_nats_connected",
        "ikiro_nats_reconnects_total",
        "ikiro_draining",
        "ikiro_tasks_down",
    ):
        assert required in names, f"{service} does not export {required}"


async def test_every_metric_the_rules_and_dashboard_use_is_exported(scrapes: dict[str, str]) -> None:
    exported = set().union(*(exported_names(text) for text in scrapes.values()))
    assert missing_names(used_names(), exported) == []


async def test_a_rule_on_a_metric_nobody_exports_is_caught(scrapes: dict[str, str]) -> None:
    exported = set().union(*(exported_names(text) for text in scrapes.values()))
    used = used_names()
    used.setdefault("ikiro_edge_sockets_opened", set()).add("IkiroTypo")
    assert missing_names(used, exported) == ["ikiro_edge_sockets_opened (used by IkiroTypo)"]


def test_exported_names_cover_labelled_families_without_samples() -> None:
    text = (
        "# HELP ikiro_x_total X.\n# TYPE ikiro_x_total counter\n"
        "# HELP ikiro_y_seconds Y.\n# TYPE ikiro_y_seconds histogram\n"
        'ikiro_y_seconds_bucket{le="+Inf"} 0.0\n'
        "# HELP ikiro_z Z.\n# TYPE ikiro_z gauge\nikiro_z 1.0\n"
    )
    assert exported_names(text) == {
        "ikiro_x_total",
        "ikiro_x_created",
        "ikiro_y_seconds_bucket",
        "ikiro_y_seconds_count",
        "ikiro_y_seconds_sum",
        "ikiro_y_seconds_created",
        "ikiro_z",
    }
