"""Scenario 3, capacity: idle sockets on one gateway process, accepts/s and resident memory per socket.

Edge: N agents (several client processes, `CONNECT_CONCURRENCY` handshakes at once in each)
connect to one edge gateway (with one dispatcher, which answers the gateway's pull on connect and
`edge.agents.get`); bare: the same agents on `bare_edge_relay`. MiniApp: N sockets in sessions of
`miniapp_session_size` on one MiniApp gateway; bare: the same on `bare_fanout`.

- accepts/s: sockets / (last handshake done - first started), over every client process.
- online (product edge only): 200 random agents are asked `edge.agents.get` every 0.5 s, until
  all sockets are up and a sample finds all 200 online; then every agent is asked (again, for
  any not yet online) until all are. Online time: from the first connect to that sample, counted
  only if the check of all then finds every agent online; bounded at 60 s.
- sessions of 20, not 10: the MiniApp gateway holds two JetStream consumers per session it serves
  and nats-server refuses a stream's 1,001st consumer (err 10026, "maximum consumers limit
  reached"), so 1,000 sessions on one replica cannot all be joined; 500 can.
- memory: the server's RSS after the sockets have been idle `IDLE_S`, minus its RSS before the
  first connect, divided by the sockets (bytes; 27 KB = 27,000 bytes).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..edge_agents import agent_ids
from ..procs import BenchError, Generator, Proc, listen_overflows
from ..report import CpuPair, CpuPhase, Goal, ScenarioResult
from ..stack import EDGE_SECRET, JWT_SECRET, Bench, agents_online, call_all
from .fanout import PRODUCT_ENV as MINIAPP_ENV

CONNECT_CONCURRENCY = 32
SAMPLE = 200
ONLINE_BOUND_S = 60.0
IDLE_S = 3.0
RSS_GOAL_BYTES = 27_000
ONLINE_GOAL_S = 30.0


@dataclass(slots=True)
class Held:
    """What one server did with N idle sockets."""

    sockets: int
    failed: int
    failures: list[str]
    accepts_per_s: float
    connected_s: float
    rss_bytes_per_socket: float
    cpu: CpuPhase
    online_s: float | None = None
    checked_all_s: float | None = None
    online_samples: list[tuple[float, float, float]] = field(default_factory=list)
    handshake_p99_ms: float = math.nan
    listen_overflows: int = 0
    closed_while_idle: dict[str, int] = field(default_factory=dict)  # by close code


async def spread(bench: Bench, module: str, name: str, total: int, make_args: Any) -> list[Generator]:
    """`capacity_procs` generator processes sharing `total` sockets."""
    procs = bench.sizes.capacity_procs
    per = math.ceil(total / procs)
    return [
        await bench.generator(f"{name}-{i + 1}", module, *make_args(i * per, min(per, total - i * per)))
        for i in range(procs)
    ]


async def hold(
    bench: Bench,
    server: Proc,
    generators: list[Generator],
    connect_args: list[dict[str, Any]],
    total: int,
    online: tuple[Any, list[str]] | None = None,
) -> Held:
    """Connect every client, watch presence if asked, then read the server's memory once idle."""
    await asyncio.sleep(1.0)
    rss_before = server.rss_kib()
    phase = bench.phase()
    overflows = listen_overflows()
    started = time.monotonic()
    connecting = asyncio.ensure_future(
        asyncio.gather(*(g.call("connect", 400, **a) for g, a in zip(generators, connect_args, strict=True)))
    )
    presence = OnlineWatch(started)
    try:
        if online is not None:
            await presence.sample_until_all(online[0], online[1], connecting)
        replies: list[dict[str, Any]] = await connecting
    finally:
        connecting.cancel()
    first = min(r["started_at"] for r in replies)
    last = max(r["done_at"] for r in replies)
    connected = sum(r["connected"] for r in replies)
    cpu = phase.end("connect", connected)
    overflows = listen_overflows() - overflows
    if not connected:
        raise BenchError(f"no socket connected: {[r['failures'] for r in replies]}")
    if online is not None:
        await presence.check_all(online[0], online[1])
    await asyncio.sleep(IDLE_S)
    rss_after = server.rss_kib()
    closed: dict[str, int] = {}
    for stats in await call_all(generators, "stats", 30):
        for code, n in stats["closes"].items():
            closed[code] = closed.get(code, 0) + n
    return Held(
        sockets=total,
        failed=total - connected,
        failures=[f for r in replies for f in r["failures"]][:5],
        accepts_per_s=connected / (last - first),
        connected_s=last - first,
        rss_bytes_per_socket=(rss_after - rss_before) * 1024 / connected,
        cpu=cpu,
        online_s=presence.online_s,
        checked_all_s=presence.checked_all_s,
        online_samples=presence.samples,
        handshake_p99_ms=max(r["handshake_ms"]["p99"] for r in replies),
        listen_overflows=overflows,
        closed_while_idle=closed,
    )


class OnlineWatch:
    """When the agents show online in `edge.agents.get`: a 200-agent sample, then every agent."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.samples: list[tuple[float, float, float]] = []  # (s, share online, share unanswered)
        self.sampled_all_s: float | None = None  # first sample with every agent online, all sockets up
        self.online_s: float | None = None  # that, once the check of all confirmed it
        self.checked_all_s: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def sample_until_all(self, nc: Any, ids: list[str], connecting: asyncio.Future[Any]) -> None:
        """Every 0.5 s, ask about 200 random agents, until all sockets are up and a sample is all online."""
        size = min(SAMPLE, len(ids))
        while self.elapsed() < ONLINE_BOUND_S:
            up = connecting.done()
            seen = await agents_online(nc, random.sample(ids, size))
            self.samples.append(
                (round(self.elapsed(), 2), len(seen.online) / size, len(seen.unanswered) / size)
            )
            if up and len(seen.online) == size:
                self.sampled_all_s = self.elapsed()
                return
            await asyncio.wait([connecting], timeout=0.5)

    async def check_all(self, nc: Any, ids: list[str]) -> None:
        """Ask about every agent (again, for those not yet online) until all are, within the bound."""
        waiting = set(ids)
        while waiting and self.elapsed() < ONLINE_BOUND_S:
            waiting -= (await agents_online(nc, sorted(waiting))).online
        self.samples.append((round(self.elapsed(), 2), 1 - len(waiting) / len(ids), 0.0))
        if waiting:
            return
        self.checked_all_s = self.elapsed()
        # The sample said all were online before the check began, and the check found none offline.
        self.online_s = self.sampled_all_s if self.sampled_all_s is not None else self.checked_all_s


async def edge(bench: Bench, product: bool) -> Held:
    """Idle edge agents on the bare relay or on the product's gateway (with its dispatcher)."""
    total = bench.sizes.capacity_edge
    broker = await bench.broker()
    prefix = "cap-agent-" if product else "cap-bare-"
    if product:
        env = {"EDGE_SECRET": EDGE_SECRET}
        await bench.service("dispatcher", "command_dispatcher", broker.url, **env)
        server = await bench.service("edge-gateway", "edge_gateway", broker.url, **env)
    else:
        server = await bench.bare("bare-relay", "bare_edge_relay", broker.url)
    generators = await spread(
        bench,
        "edge_agents",
        "agents",
        total,
        lambda first, count: [
            "--prefix",
            prefix,
            "--first",
            str(first),
            "--count",
            str(count),
            "--secret",
            EDGE_SECRET,
        ],
    )
    url = f"ws://127.0.0.1:{server.port}/edge/ws"
    args = [{"url": url, "concurrency": CONNECT_CONCURRENCY}] * len(generators)
    online = (await bench.nats(broker.url), agent_ids(prefix, 0, total)) if product else None
    try:
        return await hold(bench, server, generators, args, total, online)
    finally:
        await bench.close()


async def miniapp(bench: Bench, product: bool) -> Held:
    """Idle MiniApp sockets on the bare server or on one MiniApp gateway."""
    s = bench.sizes
    total = s.capacity_miniapp
    broker = await bench.broker()
    if product:
        server = await bench.service("miniapp-gateway", "miniapp_gateway", broker.url, **MINIAPP_ENV)
    else:
        server = await bench.bare("bare-fanout", "bare_fanout")
    sessions = [f"cap-{i}" for i in range(math.ceil(total / s.miniapp_session_size))]
    generators = await spread(
        bench, "miniapp_clients", "members", total, lambda first, count: ["--tag", f"c{first}"]
    )
    per = math.ceil(len(sessions) / len(generators))
    url = f"ws://127.0.0.1:{server.port}/ws/miniapp"
    args = [
        {
            "url": url,
            "sessions": sessions[i * per : (i + 1) * per],
            "per_session": s.miniapp_session_size,
            "user_prefix": "u-",
            "secret": JWT_SECRET,
            "concurrency": CONNECT_CONCURRENCY,
        }
        for i in range(len(generators))
    ]
    try:
        return await hold(bench, server, generators, args, len(sessions) * s.miniapp_session_size)
    finally:
        await bench.close()


async def run(bench: Bench) -> ScenarioResult:
    """Edge and MiniApp sockets, bare then product, each part on a fresh broker."""
    s = bench.sizes
    result = ScenarioResult(
        key="capacity",
        title="3. Capacity",
        setup=(
            f"{s.capacity_edge:,} edge agents / {s.capacity_miniapp:,} MiniApp sockets (sessions of "
            f"{s.miniapp_session_size}) on one server process, {s.capacity_procs} client processes with "
            f"{CONNECT_CONCURRENCY} handshakes in flight each; RSS read after {IDLE_S:.0f} s idle"
        ),
    )
    # Each part on a fresh broker, all its processes stopped before the next starts; a part that
    # fails leaves its column empty and the others still run.
    parts: dict[tuple[str, bool], Held | None] = {}
    failures: list[str] = []
    for kind, measure in (("edge", edge), ("miniapp", miniapp)):
        for product in (False, True):
            try:
                parts[kind, product] = await measure(bench, product)
            except Exception as err:
                parts[kind, product] = None
                failures.append(f"{kind} {'product' if product else 'bare'}: {type(err).__name__}: {err}")
                traceback.print_exc()
                await bench.close()
    if failures:
        result.error = "; ".join(failures)
    sockets = {"edge": s.capacity_edge, "miniapp": s.capacity_miniapp}
    for kind, name in (("edge", "edge agents"), ("miniapp", "MiniApp sockets")):
        b, p = parts[kind, False], parts[kind, True]
        add_rows(result, kind, f"{sockets[kind]:,} idle {name}", b, p)
        if b is not None or p is not None:
            result.cpu.append(
                CpuPair(
                    f"connecting {sockets[kind]:,} {name}",
                    "accept",
                    b.cpu if b else None,
                    p.cpu if p else None,
                )
            )
        if b is not None and p is not None:
            top = p.cpu.busiest_generator()
            result.notes.append(
                f"load generators ({name}): the same client processes opened {b.accepts_per_s:,.0f} "
                f"sockets/s on bare, {b.accepts_per_s / p.accepts_per_s:.1f}x the product's rate; busiest "
                f"client process {(top[1] if top else 0) * 100:.0f}% of a core against the product"
            )
        for side, held in (("bare", b), ("product", p)):
            if held is not None and held.closed_while_idle:
                result.notes.append(
                    f"{name}, {side}: sockets closed while idle, by code: {held.closed_while_idle}"
                )
    if (held := parts["edge", True]) is not None:
        result.notes.append(
            f"edge.agents.get samples (s since first connect, share of {SAMPLE} online, share not answered "
            f"within 10 s): {held.online_samples}"
        )
        result.extra["online_samples"] = held.online_samples
    return result


def add_rows(result: ScenarioResult, kind: str, section: str, b: Held | None, p: Held | None) -> None:
    """The table rows of one kind of socket; a side that failed shows as empty."""

    def both(
        key: str,
        metric: str,
        figure: Callable[[Held], float],
        goal: Callable[[float | None], Goal] | None = None,
    ) -> None:
        value_b = figure(b) if b is not None else None
        value_p = figure(p) if p is not None else None
        result.row(f"{kind}_{key}", metric, value_b, value_p, goal(value_p) if goal else None, section)

    both("failed", "sockets that failed to connect", lambda h: float(h.failed))
    both("accepts_per_s", "accepts/s", lambda h: h.accepts_per_s)
    both("connected_s", "all sockets up (s)", lambda h: h.connected_s)
    both("handshake_p99", "handshake p99 (ms)", lambda h: h.handshake_p99_ms)
    both("listen_overflows", "listen queue overflows (kernel)", lambda h: float(h.listen_overflows))
    both("closed_idle", "sockets closed by the server", lambda h: float(sum(h.closed_while_idle.values())))
    both(
        "rss_kb",
        "RSS per socket (KB)",
        lambda h: h.rss_bytes_per_socket / 1000,
        lambda kb: Goal("<= 27 KB", None if kb is None else kb * 1000 <= RSS_GOAL_BYTES),
    )
    both("cpu", "CPU ms/accept server+nats", lambda h: h.cpu.server_per_op())
    if kind == "edge":
        online = p.online_s if p is not None else None
        met = None if p is None else online is not None and online <= ONLINE_GOAL_S
        result.row(
            "edge_online_s", "all online in edge.agents.get (s)", None, online, Goal("<= 30 s", met), section
        )
