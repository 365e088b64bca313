"""Scenario 1, the edge command path: throughput, latency and CPU per command, product against bare.

Product: submit -> durable record -> socket -> received / executing / completed acks -> the
`completed` lifecycle event, through one command dispatcher and one edge gateway. Bare: a NATS
request relayed to the socket, answered at the agent's `completed` ack (`bare_edge_relay`).
The same agent processes (50 agents in 2 processes) and the same submitter process drive both,
closed loop: 64 in flight, then 512 in flight (each after a warm-up), then one at a time. Then a
second dispatcher joins the same stack and the 64 / 512 phases run again, then it leaves and they
run a third time: two dispatchers are compared with the mean of one before and after (A-B-A,
so drift over those minutes cancels). The dispatchers' `/metrics` give the compare-and-set
conflicts per state transition.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from ..procs import BenchError, Generator, Proc
from ..report import CpuPair, CpuPhase, Goal, ScenarioResult
from ..stack import EDGE_SECRET, Bench, call_all, metric_sum
from ..stats import summary

DRAIN_BOUND_S = 45.0  # commands in flight at the window's end finish (or time out at 30 s) within this
CONFLICTS = "ikiro_command_write_conflicts_total"
TRANSITIONS = "ikiro_command_transitions_total"


@dataclass(slots=True)
class Load:
    """One closed-loop phase: its latencies, throughput and CPU."""

    concurrency: int
    latency: dict[str, float]
    throughput: float
    errors: int
    cpu: CpuPhase


@dataclass(slots=True)
class Side:
    """Everything measured on one side (bare, product, product with two dispatchers)."""

    loads: dict[int, Load] = field(default_factory=dict)
    sequential: dict[str, dict[str, float]] = field(default_factory=dict)
    sequential_errors: int = 0
    conflicts_per_transition: float | None = None


def load_timeout(count: int) -> float:
    """Bound on a one-at-a-time phase: 60 s plus 20 ms a command."""
    return 60 + count * 0.02


async def run_load(bench: Bench, submitter: Generator, concurrency: int, label: str) -> Load:
    """A warm-up, then a measured window with `concurrency` in flight; CPU sampled at its edges."""
    s = bench.sizes
    start_at = time.monotonic() + s.warm_s
    call = asyncio.create_task(
        submitter.call(
            "load",
            s.warm_s + s.load_s + DRAIN_BOUND_S,
            concurrency=concurrency,
            start_at=start_at,
            duration_s=s.load_s,
        )
    )
    try:
        await asyncio.sleep(start_at - time.monotonic())
        phase = bench.phase()
        await asyncio.sleep(start_at + s.load_s - time.monotonic())
        cpu_before_drain = phase.end(label, 0)
        reply = await call
    finally:
        call.cancel()
    done = len(reply["latencies_ms"])
    cpu_before_drain.ops = done
    return Load(
        concurrency=concurrency,
        latency=summary(reply["latencies_ms"]),
        throughput=done / s.load_s,
        errors=reply["errors"],
        cpu=cpu_before_drain,
    )


async def start_agents(bench: Bench, url: str, prefix: str) -> list[Generator]:
    """The agent processes, every agent connected to `url`."""
    s = bench.sizes
    per = math.ceil(s.edge_agents / s.edge_agent_procs)
    agents = []
    for i in range(s.edge_agent_procs):
        first = i * per
        count = min(per, s.edge_agents - first)
        args = ["--prefix", prefix, "--first", str(first), "--count", str(count), "--secret", EDGE_SECRET]
        agents.append(await bench.generator(f"agents-{i + 1}", "edge_agents", *args))
    replies = await call_all(agents, "connect", 60, url=url, concurrency=16)
    if sum(r["connected"] for r in replies) != s.edge_agents:
        raise BenchError(f"agents failed to connect: {[r['failures'] for r in replies]}")
    return agents


async def drive(bench: Bench, side: Side, target: str, url: str, nats_url: str, prefix: str) -> Generator:
    """Connect the agents and a submitter, then run the 64, 512 and one-at-a-time phases."""
    s = bench.sizes
    await start_agents(bench, url, prefix)
    submitter = await bench.generator(
        "submitter",
        "edge_submitter",
        *("--nats", nats_url, "--target", target, "--prefix", prefix, "--agents", str(s.edge_agents)),
    )
    side.loads[64] = await run_load(bench, submitter, 64, "64 in flight")
    side.loads[512] = await run_load(bench, submitter, 512, "512 in flight")
    reply = await submitter.call("sequential", load_timeout(s.sequential), count=s.sequential)
    side.sequential = {"done": summary(reply["done_ms"]), "sent": summary(reply["sent_ms"])}
    side.sequential_errors = reply["errors"]
    return submitter


async def conflict_counts(dispatchers: list[Proc]) -> tuple[float, float]:
    """CAS conflicts and state transitions so far, summed over the dispatchers."""
    texts = [await d.metrics() for d in dispatchers]
    return sum(metric_sum(t, CONFLICTS) for t in texts), sum(metric_sum(t, TRANSITIONS) for t in texts)


async def run(bench: Bench) -> ScenarioResult:
    """Bare, then the product with one dispatcher, then with two."""
    s = bench.sizes
    result = ScenarioResult(
        key="edge",
        title="1. Edge command path",
        setup=(
            f"{s.edge_agents} agents in {s.edge_agent_procs} processes, 1 submitter process; closed loop, "
            f"64 then 512 in flight, each {s.warm_s:.0f} s warm-up + {s.load_s:.0f} s measured; "
            f"{s.sequential:,} commands one at a time"
        ),
    )
    broker = await bench.broker()
    bare, product, replicas, again = Side(), Side(), Side(), Side()

    relay = await bench.bare("bare-relay", "bare_edge_relay", broker.url)
    await drive(bench, bare, "bare", f"ws://127.0.0.1:{relay.port}/edge/ws", broker.url, "bare-agent-")
    await bench.stop()

    env = {"EDGE_SECRET": EDGE_SECRET}
    dispatcher = await bench.service("dispatcher-1", "command_dispatcher", broker.url, **env)
    gateway = await bench.service("edge-gateway", "edge_gateway", broker.url, **env)
    c0, t0 = await conflict_counts([dispatcher])
    submitter = await drive(
        bench, product, "product", f"ws://127.0.0.1:{gateway.port}/edge/ws", broker.url, "agent-"
    )
    c1, t1 = await conflict_counts([dispatcher])
    product.conflicts_per_transition = (c1 - c0) / (t1 - t0) if t1 > t0 else None

    second = await bench.service("dispatcher-2", "command_dispatcher", broker.url, **env)
    c0, t0 = await conflict_counts([dispatcher, second])
    replicas.loads[64] = await run_load(bench, submitter, 64, "64 in flight, 2 dispatchers")
    replicas.loads[512] = await run_load(bench, submitter, 512, "512 in flight, 2 dispatchers")
    c1, t1 = await conflict_counts([dispatcher, second])
    replicas.conflicts_per_transition = (c1 - c0) / (t1 - t0) if t1 > t0 else None
    result.extra["conflicts"] = {"conflicts": c1 - c0, "transitions": t1 - t0}
    # One dispatcher again: the section compares two dispatchers with the mean of one before and
    # after (A-B-A), so a drift of the machine or of the store over those minutes cancels out.
    await bench.stop(second)
    again.loads[64] = await run_load(bench, submitter, 64, "64 in flight, 1 dispatcher again")
    again.loads[512] = await run_load(bench, submitter, 512, "512 in flight, 1 dispatcher again")
    result.extra["agents"] = [
        await g.call("stats", 10) for g in bench.fleet.generators() if g.name.startswith("agents")
    ]
    fill(result, bare, product, replicas, again)
    return result


def fill(result: ScenarioResult, bare: Side, product: Side, replicas: Side, again: Side) -> None:
    """The scenario's rows, CPU tables and notes."""

    def ratio(p: float, b: float) -> float:
        return p / b if b else math.nan

    b64, b512, p64, p512 = bare.loads[64], bare.loads[512], product.loads[64], product.loads[512]
    result.row("throughput_64", "throughput @64 (cmd/s)", b64.throughput, p64.throughput)
    t512 = ratio(p512.throughput, b512.throughput)
    result.row(
        "throughput_512",
        "throughput @512 (cmd/s)",
        b512.throughput,
        p512.throughput,
        Goal(">= 0.50x", t512 >= 0.5),
    )
    lat = ratio(p64.latency["p50"], b64.latency["p50"])
    result.row(
        "p50_64", "latency p50 @64 (ms)", b64.latency["p50"], p64.latency["p50"], Goal("<= 3x", lat <= 3)
    )
    for q in ("p95", "p99", "max"):
        result.row(f"{q}_64", f"latency {q} @64 (ms)", b64.latency[q], p64.latency[q])
    result.row("p50_512", "latency p50 @512 (ms)", b512.latency["p50"], p512.latency["p50"])
    result.row("p99_512", "latency p99 @512 (ms)", b512.latency["p99"], p512.latency["p99"])
    for conc, b, p in ((64, b64, p64), (512, b512, p512)):
        cpu = ratio(p.cpu.server_per_op(), b.cpu.server_per_op())
        goal = Goal("<= 3x", cpu <= 3) if conc == 512 else None
        result.row(
            f"cpu_{conc}",
            f"CPU ms/cmd server+nats @{conc}",
            b.cpu.server_per_op(),
            p.cpu.server_per_op(),
            goal,
        )
    result.row(
        "errors",
        "commands failed or timed out",
        float(b64.errors + b512.errors + bare.sequential_errors),
        float(p64.errors + p512.errors + product.sequential_errors),
    )

    one = "one at a time"
    sent = product.sequential["sent"]
    result.row(
        "seq_sent_p50",
        "submit -> sent p50 (ms)",
        None,
        sent["p50"],
        Goal("<= 1.5 ms", sent["p50"] <= 1.5),
        one,
    )
    result.row("seq_sent_p99", "submit -> sent p99 (ms)", None, sent["p99"], section=one)
    full = sent["count"] >= 1000
    max_goal = Goal("<= 20 ms" + ("" if full else " (judged on 1,000)"), sent["max"] <= 20 if full else None)
    result.row(
        "seq_sent_max", f"submit -> sent max of {sent['count']:.0f} (ms)", None, sent["max"], max_goal, one
    )
    result.row(
        "seq_done_p50",
        "to done p50 (ms; bare: reply)",
        bare.sequential["done"]["p50"],
        product.sequential["done"]["p50"],
        section=one,
    )
    result.row(
        "seq_done_p99",
        "to done p99 (ms; bare: reply)",
        bare.sequential["done"]["p99"],
        product.sequential["done"]["p99"],
        section=one,
    )

    two = "2 dispatchers vs 1 (baseline column: 1, mean of before and after)"
    r64, r512 = replicas.loads[64], replicas.loads[512]
    for conc, two_d in ((64, r64), (512, r512)):
        before, after = product.loads[conc], again.loads[conc]
        one_throughput = (before.throughput + after.throughput) / 2
        tr = ratio(two_d.throughput, one_throughput)
        result.row(
            f"replicas_throughput_{conc}",
            f"throughput @{conc} (cmd/s)",
            one_throughput,
            two_d.throughput,
            Goal(">= 0.95x (no slower, 5% noise)", tr >= 0.95),
            two,
        )
        result.row(
            f"replicas_p50_{conc}",
            f"latency p50 @{conc} (ms)",
            (before.latency["p50"] + after.latency["p50"]) / 2,
            two_d.latency["p50"],
            section=two,
        )
        result.notes.append(
            f"one dispatcher @{conc}: {before.throughput:,.0f} cmd/s before the second joined, "
            f"{after.throughput:,.0f} after it left (two: {two_d.throughput:,.0f})"
        )
    result.row(
        "replicas_cpu_512",
        "CPU ms/cmd server+nats @512",
        (p512.cpu.server_per_op() + again.loads[512].cpu.server_per_op()) / 2,
        r512.cpu.server_per_op(),
        section=two,
    )
    result.row(
        "cas_conflicts",
        "CAS conflicts per transition",
        product.conflicts_per_transition,
        replicas.conflicts_per_transition,
        section=two,
    )

    result.cpu = [
        CpuPair("64 in flight", "command", b64.cpu, p64.cpu),
        CpuPair("512 in flight", "command", b512.cpu, p512.cpu),
        CpuPair("512 in flight, 1 vs 2 dispatchers", "command", p512.cpu, r512.cpu, "1 disp.", "2 disp."),
    ]
    busiest = [b.cpu.busiest_generator() for b in (b64, b512, p64, p512, r64, r512)]
    top = max((x for x in busiest if x), key=lambda x: x[1], default=None)
    result.notes.append(
        f"load generators: the same agent and submitter processes drove bare at {b512.throughput:,.0f} cmd/s,"
        " "
        f"{ratio(b512.throughput, p512.throughput):.1f}x the product's {p512.throughput:,.0f}; the busiest "
        f"generator used {top[1] * 100 if top else math.nan:.0f}% of one core ({top[0] if top else '-'})"
    )
    result.extra["raw"] = {
        name: {
            "loads": {
                str(c): {"latency": ld.latency, "throughput": ld.throughput, "errors": ld.errors}
                for c, ld in side.loads.items()
            },
            "sequential": side.sequential,
        }
        for name, side in (
            ("bare", bare),
            ("product", product),
            ("two_dispatchers", replicas),
            ("one_dispatcher_again", again),
        )
    }
