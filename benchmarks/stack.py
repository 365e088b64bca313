"""What a scenario runs on: a broker, product services, bare baselines and load generators, in one `Fleet`.

The product is a black box: `python -m services.<name>` configured by environment variables,
spoken to over WebSocket, HTTP and NATS only. `close` stops every process and broker a scenario
started, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import orjson

from devtools.natsserver import free_port, nats_server_binary
from shared.protocol import subjects

from .procs import BenchError, Fleet, Generator, Group, Proc, Watched
from .report import CpuPhase

ROOT = Path(__file__).resolve().parent.parent
EDGE_SECRET = "bench-edge-secret"
JWT_SECRET = "bench-supabase-jwt-secret-of-at-least-32-bytes"
LOG_LEVEL = "WARNING"


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much each scenario does; `quick` fits a laptop, `full` is what the goals are judged on."""

    name: str
    edge_agents: int
    edge_agent_procs: int
    warm_s: float
    load_s: float
    sequential: int
    fanout_procs: int
    saturate_s: float
    paced_s: int
    capacity_edge: int
    capacity_miniapp: int
    capacity_procs: int
    miniapp_session_size: int
    storm_agents: int
    storm_agent_procs: int
    history_records: tuple[int, ...]  # finished records a dispatcher starts over
    unfinished_records: int


QUICK = Sizes(
    name="quick",
    edge_agents=50,
    edge_agent_procs=2,
    warm_s=1.0,
    load_s=3.0,
    sequential=300,
    fanout_procs=4,
    saturate_s=3.0,
    paced_s=5,
    capacity_edge=1_000,
    capacity_miniapp=1_000,
    capacity_procs=2,
    miniapp_session_size=20,
    storm_agents=300,
    storm_agent_procs=2,
    history_records=(100_000,),
    unfinished_records=20_000,
)
FULL = Sizes(
    name="full",
    edge_agents=50,
    edge_agent_procs=2,
    warm_s=2.0,
    load_s=10.0,
    sequential=1_000,
    fanout_procs=4,
    saturate_s=10.0,
    paced_s=20,
    capacity_edge=10_000,
    capacity_miniapp=10_000,
    capacity_procs=4,
    miniapp_session_size=20,
    storm_agents=2_000,
    storm_agent_procs=2,
    history_records=(500_000, 2_000_000),
    unfinished_records=100_000,
)


class Broker(Proc):
    """nats-server: its readiness is the monitoring port's `/healthz`; `url` is for clients."""

    ready_path = "/healthz"

    def __init__(self, *args: Any, url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.url = url


P = TypeVar("P", bound=Proc)


class Phase:
    """CPU of every process from construction to `end`."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.before = fleet.sample()

    def end(self, label: str, ops: int) -> CpuPhase:
        """The CPU of the phase so far, as `label` over `ops` operations."""
        return CpuPhase.between(label, ops, self.before, self.fleet.sample(), self.fleet.groups())


class Bench:
    """One scenario's processes, temp directory and sizes."""

    def __init__(self, sizes: Sizes, tmp: Path, root: Path = ROOT) -> None:
        self.sizes = sizes
        self.tmp = tmp
        self.root = root
        self.fleet = Fleet()
        self.fleet.watch(Watched("orchestrator", "loadgen", os.getpid()))
        self.started_brokers = 0
        self.nats_clients: list[Any] = []

    def phase(self) -> Phase:
        """Start measuring a phase's CPU."""
        return Phase(self.fleet)

    async def broker(self) -> Broker:
        """A fresh `nats-server -js` (the product's own binary) with its store under the temp dir.

        Started like every other process (its own session, killed with the orchestrator), ready
        when its monitoring port's `/healthz` answers 200, JetStream included."""
        self.started_brokers += 1
        store = self.tmp / f"nats-store-{self.started_brokers}"
        store.mkdir()
        port, monitor = free_port(), free_port()
        argv = [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(monitor),
            "-sd",
            str(store),
        ]
        url = f"nats://127.0.0.1:{port}"
        broker = self._proc(Broker, "nats-server", "broker", argv, env={}, port=monitor, url=url)
        await self.fleet.start(broker)
        return broker

    async def nats(self, url: str) -> Any:
        """A NATS client for the orchestrator's own requests, closed with the bench."""
        nc = await nats.connect(url, max_reconnect_attempts=-1)
        self.nats_clients.append(nc)
        return nc

    def _proc(self, cls: type[P], name: str, group: Group, argv: Sequence[str], **kw: Any) -> P:
        if any(m.name == name for m in self.fleet.members):
            raise BenchError(f"two processes named {name}")
        return cls(name, group, argv, cwd=self.root, log_dir=self.tmp, **kw)

    async def service(self, name: str, module: str, nats_url: str, **env: str) -> Proc:
        """`python -m services.<module>` on a free port, started and ready."""
        port = free_port()
        settings = {
            "NATS_URL": nats_url,
            "ENVIRONMENT": "development",  # the benchmark's own secrets are short, and public
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": LOG_LEVEL,
        }
        proc = self._proc(
            Proc,
            name,
            "product",
            [sys.executable, "-m", f"services.{module}"],
            env={**settings, **env},
            port=port,
        )
        await self.fleet.start(proc)
        return proc

    async def bare(self, name: str, module: str, nats_url: str | None = None) -> Proc:
        """A bare baseline server, `python -m benchmarks.<module> PORT`, started and ready."""
        port = free_port()
        env = {"NATS_URL": nats_url} if nats_url else {}
        argv = [sys.executable, "-m", f"benchmarks.{module}", str(port)]
        proc = self._proc(Proc, name, "baseline", argv, env=env, port=port)
        await self.fleet.start(proc)
        return proc

    async def generator(self, name: str, module: str, *args: str) -> Generator:
        """`python -m benchmarks.<module> ARGS`, started and ready for ops."""
        argv = [sys.executable, "-m", f"benchmarks.{module}", *args]
        proc = self._proc(Generator, name, "loadgen", argv, env={})
        await self.fleet.start(proc)
        return proc

    async def stop(self, *procs: Proc) -> None:
        """Stop these processes; when none are named, every one but the broker."""
        if not procs:
            procs = tuple(m for m in self.fleet.members if isinstance(m, Proc) and m.group != "broker")
        await self.fleet.stop(procs)

    async def close(self) -> None:
        """Stop every process of the scenario, the broker last."""
        for nc in self.nats_clients:
            # A client of a broker already gone has nothing left to close.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        self.nats_clients.clear()
        await self.stop()
        await self.fleet.stop()


async def call_all(
    generators: Sequence[Generator], op: str, timeout_s: float, **args: Any
) -> list[dict[str, Any]]:
    """The same op on every generator at once."""
    return list(await asyncio.gather(*(g.call(op, timeout_s, **args) for g in generators)))


@dataclass(slots=True)
class Presence:
    """What `edge.agents.get` said about some agents: online, and those it did not answer in time."""

    online: set[str]
    unanswered: set[str]


async def agents_online(nc: Any, ids: Sequence[str], concurrency: int = 200) -> Presence:
    """Ask `edge.agents.get` about each of `ids`, `concurrency` at a time (10 s bound each)."""
    slots = asyncio.Semaphore(concurrency)
    found = Presence(set(), set())

    async def one(agent: str) -> None:
        async with slots:
            try:
                reply = await nc.request(
                    subjects.AGENTS_GET, orjson.dumps({"edge_agent_id": agent}), timeout=10
                )
            except Exception:  # no answer within the bound (or no responder): not known online
                found.unanswered.add(agent)
                return
            body = orjson.loads(reply.data)
            if body.get("ok") and body.get("online"):
                found.online.add(agent)

    await asyncio.gather(*(one(a) for a in ids))
    return found


def metric_sum(exposition: str, name: str) -> float:
    """The sum of a metric's samples over all label sets in a Prometheus text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(exposition))
