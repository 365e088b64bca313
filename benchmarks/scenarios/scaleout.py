"""Scenario 5, dispatcher scale-out: the same load on 1, 2 and 4 replicas, and starts over history.

Scale-out: one edge gateway, the agents and the submitter of scenario 1, 64 in flight; the
dispatcher tier grows from 1 to 2 to 4 replicas (each step once the partitions have settled, so
every replica holds its share). Measured per step: throughput, the dispatchers' total CPU per
completed command (the baseline column is 1 replica), and the busiest replica's share.

Start-up: a fresh broker whose commands bucket already keeps N finished records (written straight
into the bucket in the stored shape: making millions through the API would take an hour), then a
dispatcher is started and timed to `/readyz` 200; the baseline column is the same start on an
empty store. Then a store with unfinished commands spread over 1,000 offline agents: the first
replica's start time and RSS, and every replica's RSS once 4 share them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from shared.protocol import subjects

from ..procs import BenchError, Proc
from ..report import Goal, ScenarioResult
from ..stack import EDGE_SECRET, Bench, metric_sum
from .edge_path import run_load, start_agents

PARTITIONS_OWNED = "ikiro_dispatcher_partitions_owned"
SETTLE_BOUND_S = 60.0
SEED_BATCH = 5_000
OFFLINE_AGENTS = 1_000
READY_BOUND_S = 120.0


def record(command_id: str, agent: str, state: str) -> bytes:
    """A command record as the dispatcher stores it (`records.RecordCodec`), in `state`."""
    at = "2026-12-01T00:00:00Z"
    history = [{"state": "queued", "at": at}]
    if state != "queued":
        history.append({"state": state, "at": at})
    return orjson.dumps(
        {
            "command_id": command_id,
            "edge_agent_id": agent,
            "command_type": "emit_event",
            "payload": {"event_type": "bench"},
            "priority": "normal",
            "ttl_s": 604800,
            "state": state,
            "attempts": 0,
            "error": None if state == "queued" else "cancelled",
            "created_at": at,
            "updated_at": at,
            "expires_at": "2026-12-08T00:00:00Z",
            "history": history,
            "sent_at": None,
            "sent_to": None,
            "acked_at": None,
            "completed_at": None,
        }
    )


async def seed(nc: Any, finished: int, unfinished: int) -> None:
    """Write records (and, for the unfinished, their index entries) straight into the store."""
    js = nc.jetstream()
    bucket = subjects.COMMANDS_BUCKET
    for n in range(finished + unfinished):
        command_id = str(uuid.uuid4())
        if n < finished:
            await nc.publish(
                subjects.kv_subject(bucket, command_id), record(command_id, "bench-done", "cancelled")
            )
        else:
            agent = f"bench-offline-{n % OFFLINE_AGENTS}"
            await nc.publish(subjects.kv_subject(bucket, command_id), record(command_id, agent, "queued"))
            await nc.publish(subjects.open_entry(subjects.partition_of(agent), command_id), b"")
        if (n + 1) % SEED_BATCH == 0:
            await nc.flush(timeout=60)
    await nc.flush(timeout=60)
    deadline = time.monotonic() + 120
    want = finished + unfinished
    while (stored := (await js.stream_info(f"KV_{bucket}")).state.messages) < want:
        if time.monotonic() > deadline:
            raise BenchError(f"seeded {stored:,} of {want:,} records")
        await asyncio.sleep(0.5)


async def start_timed(bench: Bench, name: str, url: str) -> tuple[Proc, float]:
    """A dispatcher started, and the seconds from its launch to `/readyz` 200."""
    began = time.monotonic()
    proc = await bench.service(name, "command_dispatcher", url, EDGE_SECRET=EDGE_SECRET)
    return proc, time.monotonic() - began


async def settled(dispatchers: list[Proc]) -> None:
    """Until every partition is owned once and every replica owns some."""
    deadline = time.monotonic() + SETTLE_BOUND_S
    while time.monotonic() < deadline:
        owned = [metric_sum(await d.metrics(), PARTITIONS_OWNED) for d in dispatchers]
        if sum(owned) == subjects.PARTITIONS and all(owned):
            return
        await asyncio.sleep(0.5)
    raise BenchError(f"partitions not settled over {len(dispatchers)} dispatchers")


async def scale_out(bench: Bench, result: ScenarioResult) -> None:
    broker = await bench.broker()
    dispatchers = [
        await bench.service("dispatcher-1", "command_dispatcher", broker.url, EDGE_SECRET=EDGE_SECRET)
    ]
    gateway = await bench.service("edge-gateway", "edge_gateway", broker.url, EDGE_SECRET=EDGE_SECRET)
    await start_agents(bench, f"ws://127.0.0.1:{gateway.port}/edge/ws", "agent-")
    s = bench.sizes
    submitter = await bench.generator(
        "submitter",
        "edge_submitter",
        *("--nats", broker.url, "--target", "product", "--prefix", "agent-", "--agents", str(s.edge_agents)),
    )
    figures: dict[int, dict[str, float]] = {}
    for size in (1, 2, 4):
        while len(dispatchers) < size:
            n = len(dispatchers) + 1
            dispatchers.append(
                await bench.service(
                    f"dispatcher-{n}", "command_dispatcher", broker.url, EDGE_SECRET=EDGE_SECRET
                )
            )
        await settled(dispatchers)
        load = await run_load(bench, submitter, 64, f"64 in flight, {size} dispatchers")
        cpu = [load.cpu.cpu_ms.get(d.name, 0.0) for d in dispatchers]
        done = load.cpu.ops
        figures[size] = {
            "throughput": load.throughput,
            "cpu_ms_per_cmd": sum(cpu) / done if done else float("nan"),
            "busiest_core_share": max(load.cpu.core_share(d.name) for d in dispatchers),
            "p50_ms": load.latency["p50"],
            "errors": load.errors,
        }
    one = figures[1]
    section = "scale-out: 64 in flight (baseline column: 1 dispatcher)"
    for size in (2, 4):
        f = figures[size]
        ratio = f["cpu_ms_per_cmd"] / one["cpu_ms_per_cmd"]
        goal = Goal("<= 1.25x", ratio <= 1.25) if size == 4 else None
        result.row(
            f"cpu_{size}",
            f"dispatchers' CPU ms/cmd, {size} replicas",
            one["cpu_ms_per_cmd"],
            f["cpu_ms_per_cmd"],
            goal,
            section,
        )
        result.row(
            f"throughput_{size}",
            f"throughput, {size} replicas (cmd/s)",
            one["throughput"],
            f["throughput"],
            section=section,
        )
        result.row(
            f"busiest_{size}",
            f"busiest replica, share of a core, {size} replicas",
            one["busiest_core_share"],
            f["busiest_core_share"],
            section=section,
        )
    result.row(
        "errors",
        "commands failed or timed out",
        None,
        float(sum(f["errors"] for f in figures.values())),
        section=section,
    )
    result.extra["scale_out"] = {str(size): f for size, f in figures.items()}
    await bench.close()


async def start_up(bench: Bench, result: ScenarioResult) -> None:
    section = "start-up: seconds to ready (baseline column: empty store)"
    empty_s: float | None = None
    for finished in (0, *bench.sizes.history_records):
        broker = await bench.broker()
        first, _ = await start_timed(bench, "creator", broker.url)  # creates the streams and buckets
        await bench.stop(first)
        nc = await bench.nats(broker.url)
        await seed(nc, finished, 0)
        _, took = await start_timed(bench, "dispatcher", broker.url)
        if finished == 0:
            empty_s = took
        else:
            result.row(
                f"start_{finished}",
                f"ready over {finished:,} finished records (s)",
                empty_s,
                took,
                Goal("<= 5 s", took <= 5.0),
                section,
            )
        result.extra.setdefault("start_up_s", {})[str(finished)] = took
        await bench.close()

    unfinished = bench.sizes.unfinished_records
    broker = await bench.broker()
    first, _ = await start_timed(bench, "creator", broker.url)
    await bench.stop(first)
    nc = await bench.nats(broker.url)
    await seed(nc, 0, unfinished)
    one, took = await start_timed(bench, "dispatcher-1", broker.url)
    rss_one = one.rss_kib() / 1024
    section = f"{unfinished:,} unfinished commands of {OFFLINE_AGENTS:,} offline agents"
    result.row(
        "start_unfinished", "first replica ready (s)", empty_s, took, Goal("<= 5 s", took <= 5.0), section
    )
    replicas = [one]
    for n in (2, 3, 4):
        replicas.append((await start_timed(bench, f"dispatcher-{n}", broker.url))[0])
    await settled(replicas)
    rss = [r.rss_kib() / 1024 for r in replicas]
    # The first replica keeps the memory it once took (Python does not hand it back): the others
    # show what a replica holding a quarter needs.
    joined = sum(rss[1:]) / len(rss[1:])
    result.row("rss_4", "RSS (MB): 1 replica alone / a replica of 4", rss_one, joined, section=section)
    result.extra["unfinished"] = {
        "records": unfinished,
        "ready_s": took,
        "rss_mb_1": rss_one,
        "rss_mb_4": rss,
    }
    await bench.close()


async def run(bench: Bench) -> ScenarioResult:
    s = bench.sizes
    result = ScenarioResult(
        key="scaleout",
        title="5. Dispatcher scale-out",
        setup=(
            f"{s.edge_agents} agents, 64 in flight, {s.load_s:.0f} s measured per step on 1, 2, 4 "
            "dispatchers; "
            f"starts over {', '.join(f'{n:,}' for n in s.history_records)} finished and "
            f"{s.unfinished_records:,} unfinished records"
        ),
    )
    await scale_out(bench, result)
    await start_up(bench, result)
    return result
