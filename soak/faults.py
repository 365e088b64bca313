"""The fault schedule: every fault of the issue at least once, spread over the run, under load.

Two tracks run side by side, each fault of a track after the previous one has recovered and not
before its planned time: the services track (SIGKILL of each dispatcher, of the edge gateway
holding most agents, of the MiniApp replica holding most members, then a SIGTERM rolling restart
of every gateway) and the NATS track (SIGKILL of a node that is not the meta leader, a network
pause of the node with most clients by SIGSTOP/SIGCONT, then SIGKILL of the meta leader). Killed
processes come back on the same port, a killed node on the same store. Every fault has a bound:
a target that does not recover within it ends the run as a harness failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS

from .agent_pool import AgentPool
from .cluster import Cluster, NatsNode
from .miniapp import MiniAppLoad
from .procs import SoakError
from .stack import Service, Stack

DISPATCHER_DOWN_S = 1.0
GATEWAY_DOWN_S = 2.0
NATS_DOWN_S = 3.0
# How long the dispatcher tier runs at each size while it is scaled (1 -> 4 -> 2) under load.
SCALE_STEP_S = 5.0
NATS_PAUSE_S = 5.0
NATS_RECOVER_S = 60.0
REJOIN_BOUND_S = 30.0


@dataclass(slots=True)
class FaultLog:
    name: str
    target: str = ""
    started: float = 0.0  # unix time
    ended: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def active_at(self, t: float, after_s: float = 10.0) -> bool:
        """Whether `t` falls in the fault or in the `after_s` of recovery that follow it."""
        end = self.ended if self.ended is not None else time.time()
        return self.started - 1.0 <= t <= end + after_s


Step = tuple[str, float, Callable[[FaultLog], Awaitable[None]]]


@contextlib.contextmanager
def held(service: Service) -> Iterator[None]:
    """While a fault has `service` down on purpose, the supervisor does not restart it."""
    service.held = True
    try:
        yield
    finally:
        service.held = False


class Faults:
    def __init__(
        self,
        cluster: Cluster,
        stack: Stack,
        agents: AgentPool,
        miniapp: MiniAppLoad,
        nc: NATS,
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.stack = stack
        self.agents = agents
        self.miniapp = miniapp
        self.nc = nc
        self.rng = rng
        self.log: list[FaultLog] = []
        self._measures: list[asyncio.Task[dict[str, Any]]] = []

    def tracks(self) -> list[list[Step]]:
        """Each step with the fraction of the run at which it is planned; the tracks interleave."""
        services: list[Step] = [
            ("sigkill_dispatcher", 0.05, lambda f: self.kill_dispatcher(f, 0)),
            ("sigkill_busiest_edge_gateway", 0.20, self.kill_busiest_edge),
            ("sigkill_busiest_miniapp_gateway", 0.35, self.kill_busiest_miniapp),
            ("sigterm_rolling_restart", 0.50, self.rolling_restart),
            ("sigterm_dispatcher", 0.62, self.sigterm_dispatcher),
            ("sigkill_dispatcher", 0.75, lambda f: self.kill_dispatcher(f, 1)),
            ("scale_dispatchers_1_4_2", 0.85, self.scale_dispatchers),
        ]
        broker: list[Step] = [
            ("sigkill_nats_node", 0.12, lambda f: self.kill_node(f, leader=False)),
            ("sigstop_nats_node", 0.42, self.pause_node),
            ("sigkill_nats_meta_leader", 0.65, lambda f: self.kill_node(f, leader=True)),
        ]
        return [services, broker]

    async def run(self, load_started: float, duration_s: float) -> None:
        """Both tracks to the end; raises the first failure (a target that did not recover)."""
        # A track that fails stops there; the other goes on to its end, so no fault is left half done.
        try:
            outcomes = await asyncio.gather(
                *(self._track(steps, load_started, duration_s) for steps in self.tracks()),
                return_exceptions=True,
            )
            await asyncio.gather(*self._measures, return_exceptions=True)  # results land in `miniapp.listed`
        finally:
            for measure in self._measures:
                measure.cancel()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _track(self, steps: list[Step], load_started: float, duration_s: float) -> None:
        for name, share, step in steps:
            wait = load_started + share * duration_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            entry = FaultLog(name, started=time.time())
            self.log.append(entry)
            try:
                await step(entry)
            except Exception as err:
                entry.error = f"{type(err).__name__}: {err}"
                raise
            finally:
                entry.ended = time.time()

    @property
    def last_ended(self) -> float:
        return max((f.ended or f.started for f in self.log), default=time.time())

    # --- services ---

    async def kill_dispatcher(self, entry: FaultLog, index: int) -> None:
        service = self.stack.dispatchers[index]
        entry.target = service.name
        with held(service):
            service.child.kill()
            await asyncio.sleep(DISPATCHER_DOWN_S)
            entry.details["ready_after_restart_s"] = round(await service.restart(), 2)

    async def sigterm_dispatcher(self, entry: FaultLog) -> None:
        """A graceful stop of one dispatcher (its partitions handed over at once), then its return."""
        service = self.stack.dispatchers[0]
        entry.target = service.name
        with held(service):
            await self._terminate(service, entry.details)
            entry.details["ready_after_restart_s"] = round(await service.restart(), 2)

    async def scale_dispatchers(self, entry: FaultLog) -> None:
        """Scale the dispatchers under load from one to four (the spares join), then down to two,
        each step by SIGTERM or a new replica as an autoscaler would."""
        entry.target = "the dispatchers"
        others = self.stack.dispatchers[1:]
        running = [s for s in others if s.child.running]
        for service in running:
            service.held = True
            await self._terminate(service, entry.details.setdefault("down_to_1", {}))
        await asyncio.sleep(SCALE_STEP_S)
        up = entry.details.setdefault("up_to_4", {})
        for service in others:
            up[service.name] = round(await service.restart(), 2)
            service.held = False
        await asyncio.sleep(SCALE_STEP_S)
        for service in others[self.stack.replicas - 1 :]:
            service.held = True  # parked again
            await self._terminate(service, entry.details.setdefault("down_to_2", {}))

    async def _terminate(self, service: Service, details: dict[str, Any]) -> None:
        began = time.monotonic()
        code = await service.terminate()
        details[service.name] = {"exit_code": code, "exit_s": round(time.monotonic() - began, 2)}
        if code is None:
            service.child.kill()
            raise SoakError(f"{service.name} did not exit within its shutdown grace after SIGTERM")

    async def kill_busiest_edge(self, entry: FaultLog) -> None:
        counts = [await s.gauge("ikiro_edge_sockets_open") or 0.0 for s in self.stack.edges]
        service = self.stack.edges[counts.index(max(counts))]
        entry.target = service.name
        entry.details["sockets_before"] = {
            s.name: int(c) for s, c in zip(self.stack.edges, counts, strict=True)
        }
        killed = time.monotonic()
        everyone = len(self.agents.agent_ids)
        with held(service):
            service.child.kill()
            # The agents move to the other gateway (backoff 1 s, jitter): how long until all are back.
            back = asyncio.create_task(self.agents.wait_connected(everyone, REJOIN_BOUND_S))
            await asyncio.sleep(GATEWAY_DOWN_S)
            entry.details["ready_after_restart_s"] = round(await service.restart(), 2)
        try:
            await back
            entry.details["all_agents_back_s"] = round(time.monotonic() - killed, 2)
        except SoakError as err:
            entry.details["all_agents_back_s"] = None
            entry.details["agents_not_back"] = str(err)

    async def kill_busiest_miniapp(self, entry: FaultLog) -> None:
        # Members may all be between sockets (another fault just closed them): wait, bounded, until a
        # replica holds some, or the kill measures nothing.
        deadline = time.monotonic() + REJOIN_BOUND_S
        while not any(self.miniapp.on_replica(i) for i in range(len(self.stack.miniapps))):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        counts = [len(self.miniapp.on_replica(i)) for i in range(len(self.stack.miniapps))]
        index = counts.index(max(counts))
        service = self.stack.miniapps[index]
        entry.target = service.name
        entry.details["members_before"] = {
            s.name: c for s, c in zip(self.stack.miniapps, counts, strict=True)
        }
        dead = self.miniapp.connections_on(index)
        killed = time.time()
        measure = self.miniapp.measure_listed(dead, index, killed, self.nc)
        with held(service):
            service.child.kill()
            self._measures.append(asyncio.create_task(measure))
            await asyncio.sleep(GATEWAY_DOWN_S)
            entry.details["ready_after_restart_s"] = round(await service.restart(), 2)

    async def rolling_restart(self, entry: FaultLog) -> None:
        """SIGTERM each gateway in turn; the next only once the last is back and ready."""
        entry.target = "every gateway"
        for service in self.stack.edges + self.stack.miniapps:
            began = time.monotonic()
            with held(service):
                sigterm_at = time.time()
                code = await service.terminate()
                step: dict[str, Any] = {
                    "sigterm_at": sigterm_at,
                    "exit_code": code,
                    "exit_s": round(time.monotonic() - began, 2),
                }
                entry.details[service.name] = step
                if code is None:
                    service.child.kill()
                    raise SoakError(f"{service.name} did not exit within its shutdown grace after SIGTERM")
                step["ready_after_restart_s"] = round(await service.restart(), 2)

    # --- NATS ---

    async def _leader(self) -> NatsNode:
        deadline = time.monotonic() + NATS_RECOVER_S
        while time.monotonic() < deadline:
            leader = await self.cluster.meta_leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        raise SoakError("no JetStream meta leader")

    async def kill_node(self, entry: FaultLog, leader: bool) -> None:
        current = await self._leader()
        node = current if leader else self.rng.choice([n for n in self.cluster.nodes if n is not current])
        entry.target = node.name
        entry.details["meta_leader_before"] = current.name
        node.child.kill()
        killed = time.monotonic()
        try:
            if leader:
                new = await self._leader()
                entry.details["new_meta_leader"] = new.name
                entry.details["election_s"] = round(time.monotonic() - killed, 2)
            await asyncio.sleep(max(0.0, NATS_DOWN_S - (time.monotonic() - killed)))
        finally:
            node.child.start()  # on the same store, whatever happened meanwhile
        entry.details["healthy_after_restart_s"] = round(await self.cluster.wait_healthy(NATS_RECOVER_S), 2)

    async def pause_node(self, entry: FaultLog) -> None:
        clients = [await self.cluster.client_connections(n) for n in self.cluster.nodes]
        node = self.cluster.nodes[clients.index(max(clients))]
        entry.target = node.name
        entry.details["clients_before"] = {
            n.name: c for n, c in zip(self.cluster.nodes, clients, strict=True)
        }
        entry.details["was_meta_leader"] = (await self._leader()) is node
        node.child.pause()
        try:
            await asyncio.sleep(NATS_PAUSE_S)
        finally:
            node.child.resume()
        entry.details["paused_s"] = NATS_PAUSE_S
        entry.details["healthy_after_resume_s"] = round(await self.cluster.wait_healthy(NATS_RECOVER_S), 2)
