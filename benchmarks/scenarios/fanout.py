"""Scenario 2, MiniApp fan-out: one session of 100 members, deliveries/s at saturation and latency when paced.

Product: two MiniApp gateway replicas, 50 members on each (4 client processes of 25). Bare: one
aiohttp process broadcasting each frame to the room (`bare_fanout`), the same 4 client processes.
20 senders (5 per process, so 10 per replica); a delivery is one `state_update` frame received
by one member, the sender's own copy included.

- Saturation: each sender keeps `WINDOW` updates in flight (the next goes when its own copy comes
  back), so the server is never idle and no socket's backlog can grow past 20 x `WINDOW`
  frames; deliveries/s over the measured window. The product's per-socket rate limit is raised
  for the whole scenario (RATE_PER_S / RATE_BURST), as the paced phases send 1 update/s each.
- Paced: 20 updates/s offered (2,000 deliveries/s), each sender once a second; "spread" puts the
  20 senders at even offsets across the second (alternating replicas), "burst" makes all 20 send
  at the same instant. Latency is sender -> each member, from the send time in `client_msg_id`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..procs import Generator
from ..report import CpuPair, CpuPhase, Goal, ScenarioResult
from ..stack import JWT_SECRET, Bench, call_all
from ..stats import summary

MEMBERS = 100
SENDERS = 20
WINDOW = 4
SATURATE_WARM_S = 1.0
PRODUCT_ENV = {
    "SUPABASE_JWT_SECRET": JWT_SECRET,
    "MINIAPP_SESSION_ACCESS": "open",
    # The contract's 30 frames/s per socket would cap a saturating sender; the paced phases need 1/s.
    "RATE_PER_S": "100000",
    "RATE_BURST": "100000",
}


@dataclass(slots=True)
class Side:
    """Everything measured on one side (bare or product)."""

    deliveries_per_s: float
    saturate_latency: dict[str, float]
    saturate_cpu: CpuPhase
    spread: dict[str, float]
    spread_missing: int
    spread_cpu: CpuPhase
    burst: dict[str, float]
    burst_missing: int
    burst_cpu: CpuPhase
    errors: dict[str, int]
    closes: dict[str, int]


async def measured(
    bench: Bench, calls: list[Any], start_at: float, duration_s: float, label: str
) -> tuple[list[dict[str, Any]], CpuPhase]:
    """Run generator calls that measure [start_at, start_at + duration_s]; sample CPU at its edges."""
    task = asyncio.gather(*calls)
    try:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        phase = bench.phase()
        await asyncio.sleep(max(0.0, start_at + duration_s - time.monotonic()))
        cpu = phase.end(label, 0)
        replies: list[dict[str, Any]] = await task
    finally:
        task.cancel()
    return replies, cpu


async def paced(
    bench: Bench, members: list[Generator], spread: bool, label: str
) -> tuple[dict[str, float], int, CpuPhase]:
    """A paced phase: 20 updates/s for `paced_s` seconds; latencies, missing deliveries, CPU."""
    s = bench.sizes
    per = SENDERS // len(members)
    start_at = time.monotonic() + 1.0

    def offsets(proc: int) -> list[float]:
        # Sender j of process i is the (j * procs + i)-th of the second: replicas alternate.
        return [((j * len(members) + proc) / SENDERS if spread else 0.0) for j in range(per)]

    bound = s.paced_s + 30
    calls = [
        g.call("paced", bound, offsets=offsets(i), start_at=start_at, duration_s=s.paced_s)
        for i, g in enumerate(members)
    ]
    replies, cpu = await measured(bench, calls, start_at, s.paced_s, label)
    latencies = [x for r in replies for x in r["latencies_ms"]]
    cpu.ops = len(latencies)
    sent = sum(r["sent"] for r in replies)
    missing = sent * MEMBERS - sum(r["received"] for r in replies)
    return summary(latencies), missing, cpu


async def drive(bench: Bench, urls: list[str]) -> Side:
    """Connect the members (urls[i] for client process i), then saturate, pace spread, pace burst."""
    s = bench.sizes
    session = f"fanout-{uuid.uuid4().hex[:8]}"
    per = MEMBERS // s.fanout_procs
    members = [
        await bench.generator(f"members-{i + 1}", "miniapp_clients", "--tag", f"p{i}")
        for i in range(s.fanout_procs)
    ]
    replies = await asyncio.gather(
        *(
            g.call(
                "connect",
                60,
                url=urls[i],
                sessions=[session],
                per_session=per,
                user_prefix=f"u{i}-",
                secret=JWT_SECRET,
                concurrency=5,
            )
            for i, g in enumerate(members)
        )
    )
    if sum(r["connected"] for r in replies) != MEMBERS:
        raise RuntimeError(f"members failed to join: {[r['failures'] for r in replies]}")
    await asyncio.sleep(1.0)  # the join's presence frames settle

    start_at = time.monotonic() + 0.5
    calls = [
        g.call(
            "saturate",
            s.saturate_s + 30,
            senders=SENDERS // len(members),
            window=WINDOW,
            start_at=start_at,
            warm_s=SATURATE_WARM_S,
            duration_s=s.saturate_s,
        )
        for g in members
    ]
    sat, sat_cpu = await measured(bench, calls, start_at + SATURATE_WARM_S, s.saturate_s, "saturation")
    delivered = sum(r["received"] for r in sat)
    sat_cpu.ops = delivered
    await asyncio.sleep(1.0)

    spread, spread_missing, spread_cpu = await paced(bench, members, True, "20 updates/s, spread")
    burst, burst_missing, burst_cpu = await paced(bench, members, False, "20 updates/s, burst")
    stats = await call_all(members, "stats", 10)
    errors: dict[str, int] = {}
    closes: dict[str, int] = {}
    for st in stats:
        for k, v in st["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in st["closes"].items():
            closes[k] = closes.get(k, 0) + v
    return Side(
        deliveries_per_s=delivered / s.saturate_s,
        saturate_latency=summary([x for r in sat for x in r["latencies_ms"]]),
        saturate_cpu=sat_cpu,
        spread=spread,
        spread_missing=spread_missing,
        spread_cpu=spread_cpu,
        burst=burst,
        burst_missing=burst_missing,
        burst_cpu=burst_cpu,
        errors=errors,
        closes=closes,
    )


async def run(bench: Bench) -> ScenarioResult:
    """Bare, then the product on two replicas, on one broker."""
    s = bench.sizes
    result = ScenarioResult(
        key="fanout",
        title="2. MiniApp fan-out",
        setup=(
            f"1 session, {MEMBERS} members in {s.fanout_procs} client processes (product: 2 replicas, "
            "50 each); "
            f"{SENDERS} senders; saturation {SATURATE_WARM_S:.0f} s warm-up + {s.saturate_s:.0f} s with "
            f"{WINDOW} updates in flight per sender; paced phases {s.paced_s} s each"
        ),
    )
    broker = await bench.broker()
    server = await bench.bare("bare-fanout", "bare_fanout")
    url = f"ws://127.0.0.1:{server.port}/ws/miniapp"
    bare = await drive(bench, [url] * s.fanout_procs)
    await bench.stop()

    a = await bench.service("miniapp-a", "miniapp_gateway", broker.url, **PRODUCT_ENV)
    b = await bench.service("miniapp-b", "miniapp_gateway", broker.url, **PRODUCT_ENV)
    half = s.fanout_procs // 2
    urls = [f"ws://127.0.0.1:{(a if i < half else b).port}/ws/miniapp" for i in range(s.fanout_procs)]
    product = await drive(bench, urls)
    fill(result, bare, product)
    return result


def fill(result: ScenarioResult, bare: Side, product: Side) -> None:
    """The scenario's rows, CPU tables and notes."""
    sat = "saturation"
    ratio = product.deliveries_per_s / bare.deliveries_per_s if bare.deliveries_per_s else 0.0
    result.row(
        "deliveries_per_s",
        "deliveries/s",
        bare.deliveries_per_s,
        product.deliveries_per_s,
        Goal(">= 0.50x", ratio >= 0.5),
        sat,
    )
    result.row(
        "updates_per_s",
        "updates/s (deliveries / 100)",
        bare.deliveries_per_s / MEMBERS,
        product.deliveries_per_s / MEMBERS,
        section=sat,
    )
    result.row(
        "saturate_p50",
        "latency p50 (ms)",
        bare.saturate_latency["p50"],
        product.saturate_latency["p50"],
        section=sat,
    )
    result.row(
        "saturate_p99",
        "latency p99 (ms)",
        bare.saturate_latency["p99"],
        product.saturate_latency["p99"],
        section=sat,
    )
    result.row(
        "cpu_saturate",
        "CPU ms/delivery server+nats",
        bare.saturate_cpu.server_per_op(),
        product.saturate_cpu.server_per_op(),
        section=sat,
    )
    for key, name, b, p, bm, pm in (
        (
            "spread",
            "20 updates/s, senders spread",
            bare.spread,
            product.spread,
            bare.spread_missing,
            product.spread_missing,
        ),
        (
            "burst",
            "20 updates/s, all at one instant",
            bare.burst,
            product.burst,
            bare.burst_missing,
            product.burst_missing,
        ),
    ):
        result.row(f"{key}_p50", "sender -> member p50 (ms)", b["p50"], p["p50"], section=name)
        result.row(
            f"{key}_p99",
            "sender -> member p99 (ms)",
            b["p99"],
            p["p99"],
            Goal("<= 20 ms", p["p99"] <= 20),
            name,
        )
        result.row(f"{key}_max", "sender -> member max (ms)", b["max"], p["max"], section=name)
        result.row(f"{key}_missing", "deliveries missing", float(bm), float(pm), Goal("0", pm == 0), name)
    result.cpu = [
        CpuPair("saturation", "delivery", bare.saturate_cpu, product.saturate_cpu),
        CpuPair("20 updates/s, burst", "delivery", bare.burst_cpu, product.burst_cpu),
    ]
    top = product.saturate_cpu.busiest_generator()
    bare_top = bare.saturate_cpu.busiest_generator()
    result.notes.append(
        f"load generators: the same client processes took {bare.deliveries_per_s:,.0f} deliveries/s "
        f"from bare, {bare.deliveries_per_s / max(product.deliveries_per_s, 1):.1f}x the product's; "
        "busiest client process "
        f"{(bare_top[1] if bare_top else 0) * 100:.0f}% of a core against bare, "
        f"{(top[1] if top else 0) * 100:.0f}% against the product"
    )
    if product.errors or product.closes:
        result.notes.append(f"product: error frames {product.errors}, socket closes {product.closes}")
    result.extra["raw"] = {
        "bare": {"errors": bare.errors, "closes": bare.closes, "spread": bare.spread, "burst": bare.burst},
        "product": {
            "errors": product.errors,
            "closes": product.closes,
            "spread": product.spread,
            "burst": product.burst,
        },
    }
