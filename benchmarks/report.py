"""Figures of a run: one table per scenario (baseline | product | ratio | goal), CPU per operation, JSON.

The ratio is product / baseline, always; each goal says which way it must go. A CPU table lists
every process of a phase pair with its CPU ms per operation (utime + stime over the phase,
divided by the phase's operations) and its share of one core (CPU time / wall time): a load
generator near 100 % would be the bottleneck, one well below is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .procs import Group, Sample

SERVER_GROUPS: tuple[Group, ...] = ("product", "baseline", "broker")
GROUP_ORDER: dict[str, int] = {"broker": 0, "baseline": 1, "product": 1, "loadgen": 2}


@dataclass(slots=True)
class Goal:
    text: str
    met: bool | None  # None: could not be judged (a side failed)


@dataclass(slots=True)
class Row:
    key: str
    metric: str
    baseline: float | None
    product: float | None
    goal: Goal | None = None
    section: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.product is None or not self.baseline:
            return None
        if math.isnan(self.baseline) or math.isnan(self.product):
            return None
        return self.product / self.baseline


@dataclass(slots=True)
class CpuPhase:
    """CPU each process spent over one measured phase, and how many operations it did."""

    label: str
    ops: int
    wall_s: float
    cpu_ms: dict[str, float]
    groups: dict[str, str]
    machine_ms: dict[str, float] = field(default_factory=dict)  # the whole machine, by kind

    @classmethod
    def between(
        cls, label: str, ops: int, before: Sample, after: Sample, groups: dict[str, Group]
    ) -> CpuPhase:
        """The phase between two samples of the same fleet."""
        names = [n for n in after.cpu_ms if n in before.cpu_ms]
        return cls(
            label=label,
            ops=ops,
            wall_s=after.at - before.at,
            cpu_ms={n: after.cpu_ms[n] - before.cpu_ms[n] for n in names},
            groups={n: groups[n] for n in names},
            machine_ms={k: after.machine_ms[k] - before.machine_ms[k] for k in after.machine_ms},
        )

    def per_op(self, name: str) -> float:
        """A process's CPU ms per operation."""
        return self.cpu_ms[name] / self.ops if self.ops else math.nan

    def core_share(self, name: str) -> float:
        """A process's CPU time over the phase's wall time (1.0: one core, all along)."""
        return self.cpu_ms[name] / (self.wall_s * 1000) if self.wall_s > 0 else math.nan

    def server_per_op(self) -> float:
        """CPU ms per op over the server side: product or baseline processes plus nats-server."""
        total = sum(ms for n, ms in self.cpu_ms.items() if self.groups[n] in SERVER_GROUPS)
        return total / self.ops if self.ops else math.nan

    def outside_shares(self) -> dict[str, float]:
        """Cores' worth of CPU spent outside this run's processes during the phase: other
        processes, kernel interrupts (loopback traffic included), hypervisor steal."""
        if self.wall_s <= 0 or not self.machine_ms:
            return {}
        wall_ms = self.wall_s * 1000
        return {
            # Per-process and machine-wide tick accounting differ a little: never below zero.
            "other processes": max(0.0, self.machine_ms["tasks"] - sum(self.cpu_ms.values())) / wall_ms,
            "irq": self.machine_ms["irq"] / wall_ms,
            "steal": self.machine_ms["steal"] / wall_ms,
        }

    def busiest_generator(self) -> tuple[str, float] | None:
        """The load generator with the highest core share, and that share."""
        shares = [(n, self.core_share(n)) for n in self.cpu_ms if self.groups[n] == "loadgen"]
        return max(shares, key=lambda s: s[1]) if shares else None


@dataclass(slots=True)
class CpuPair:
    """The same phase run against the baseline and against the product."""

    label: str
    unit: str
    baseline: CpuPhase | None
    product: CpuPhase | None
    baseline_name: str = "baseline"
    product_name: str = "product"


@dataclass(slots=True)
class ScenarioResult:
    key: str
    title: str
    setup: str
    rows: list[Row] = field(default_factory=list)
    cpu: list[CpuPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(
        self,
        key: str,
        metric: str,
        baseline: float | None,
        product: float | None,
        goal: Goal | None = None,
        section: str = "",
    ) -> None:
        """Add a table row."""
        self.rows.append(Row(key, metric, baseline, product, goal, section))


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure for a table cell; `-` for none."""
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def verdict(goal: Goal | None) -> str:
    """A goal and whether it was met."""
    if goal is None:
        return ""
    mark = {True: "met", False: "NOT MET", None: "n/a"}[goal.met]
    return f"{goal.text}: {mark}"


def render(result: ScenarioResult) -> str:
    """A scenario's table, CPU tables and notes, as text."""
    out = [f"\n=== {result.title}", f"    {result.setup}"]
    if result.error:
        out.append(f"    FAILED: {result.error}")
    if result.rows:
        width = max(len(r.metric) for r in result.rows) + 2
        out.append(f"{'':<{width}}{'baseline':>12}{'product':>12}{'ratio':>9}   goal")
        section = ""
        for row in result.rows:
            if row.section != section:
                section = row.section
                out.append(f"  -- {section}")
            out.append(
                f"{row.metric:<{width}}{fmt(row.baseline):>12}{fmt(row.product):>12}"
                f"{fmt(row.ratio):>9}   {verdict(row.goal)}"
            )
    for pair in result.cpu:
        out.extend(render_cpu(pair))
    out.extend(f"  * {note}" for note in result.notes)
    return "\n".join(out)


def render_cpu(pair: CpuPair) -> list[str]:
    """One CPU table: every process of the baseline and the product phase."""
    phases = [p for p in (pair.baseline, pair.product) if p is not None]
    if not phases:
        return []
    names: dict[str, str] = {}
    for phase in phases:
        names.update(phase.groups)
    order = sorted(names, key=lambda n: (GROUP_ORDER.get(names[n], 3), n))
    head = f"  CPU ms per {pair.unit}, {pair.label}"
    ops = "  ".join(f"{p.ops:,} ops in {p.wall_s:.1f} s" for p in phases)
    out = [
        f"\n{head}  ({ops})",
        f"    {'process':<22}{'group':<10}{pair.baseline_name:>12}{'core %':>8}"
        f"{pair.product_name:>12}{'core %':>8}",
    ]

    def cell(phase: CpuPhase | None, name: str) -> str:
        if phase is None or name not in phase.cpu_ms:
            return f"{'-':>12}{'':>8}"
        return f"{fmt(phase.per_op(name), 3):>12}{phase.core_share(name) * 100:>7.0f}%"

    for name in order:
        out.append(f"    {name:<22}{names[name]:<10}{cell(pair.baseline, name)}{cell(pair.product, name)}")
    base = pair.baseline.server_per_op() if pair.baseline else None
    prod = pair.product.server_per_op() if pair.product else None
    ratio = prod / base if base and prod is not None else None
    out.append(
        f"    {'sum server + nats':<32}{fmt(base, 3):>12}{'':>8}{fmt(prod, 3):>12}{'':>8}  ratio {fmt(ratio)}"
    )
    outside = [p.outside_shares() for p in phases]
    if all(outside):
        parts = ", ".join(
            f"{kind} {' / '.join(f'{o[kind] * 100:.0f}%' for o in outside)}" for kind in outside[0]
        )
        out.append(f"    meanwhile outside these processes, % of one core: {parts}")
    return out


def summary(results: Iterable[ScenarioResult]) -> str:
    """Every goal of the run, met or not, with its figures."""
    lines = ["\n=== Goals"]
    for result in results:
        if result.error:
            lines.append(f"  {result.title}: FAILED ({result.error})")
        for row in result.rows:
            if row.goal is None:
                continue
            mark = {True: "met    ", False: "NOT MET", None: "n/a    "}[row.goal.met]
            figures = f"baseline {fmt(row.baseline)}, product {fmt(row.product)}, ratio {fmt(row.ratio)}"
            section = f"[{row.section}] " if row.section else ""
            lines.append(f"  {mark}  {result.key}: {section}{row.metric}: {figures}  (goal {row.goal.text})")
    return "\n".join(lines)


def to_json(result: ScenarioResult) -> dict[str, Any]:
    """A scenario's figures as plain JSON data."""
    rows = [{**asdict(r), "ratio": r.ratio} for r in result.rows]
    cpu = []
    for pair in result.cpu:
        entry: dict[str, Any] = {"label": pair.label, "unit": pair.unit}
        for side, phase in (("baseline", pair.baseline), ("product", pair.product)):
            if phase is None:
                continue
            entry[side] = {
                **asdict(phase),
                "ms_per_op": {n: phase.per_op(n) for n in phase.cpu_ms},
                "core_share": {n: phase.core_share(n) for n in phase.cpu_ms},
                "server_ms_per_op": phase.server_per_op(),
            }
        cpu.append(entry)
    return {
        "title": result.title,
        "setup": result.setup,
        "error": result.error,
        "rows": rows,
        "cpu": cpu,
        "notes": result.notes,
        "extra": result.extra,
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Two runs side by side: each row's product figure, ratio and goal, A then B."""
    lines = [
        f"A: {a['meta'].get('commit', '?')[:12]} {a['meta'].get('date', '')} size {a['meta'].get('size')}",
        f"B: {b['meta'].get('commit', '?')[:12]} {b['meta'].get('date', '')} size {b['meta'].get('size')}",
        "(B/A: B's product figure over A's)",
    ]

    def met(row: dict[str, Any]) -> str:
        goal = row.get("goal")
        return "" if not goal else {True: "met", False: "NOT", None: "n/a"}[goal["met"]]

    for key, sa in a["scenarios"].items():
        sb = b["scenarios"].get(key)
        if sb is None:
            continue
        lines.append(f"\n=== {sa['title']}")
        lines.append(
            f"{'':<58}{'A product':>11}{'A ratio':>9}{'B product':>11}{'B ratio':>9}{'B/A':>7}  goal A -> B"
        )
        rows_b = {r["key"]: r for r in sb["rows"]}
        for ra in sa["rows"]:
            rb = rows_b.get(ra["key"])
            if rb is None:
                continue
            label = (f"[{ra['section']}] " if ra["section"] else "") + ra["metric"]
            change = rb["product"] / ra["product"] if ra["product"] and rb["product"] is not None else None
            goals = f"{met(ra)} -> {met(rb)}" if ra.get("goal") else ""
            lines.append(
                f"{label[:57]:<58}{fmt(ra['product']):>11}{fmt(ra['ratio']):>9}"
                f"{fmt(rb['product']):>11}{fmt(rb['ratio']):>9}{fmt(change):>7}  {goals}"
            )
    return "\n".join(lines)
