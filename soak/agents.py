"""Simulated edge agents, behaving as the deployed ones do (DESIGN section 3), in a worker process.

Each agent holds one socket to whichever edge gateway a load balancer would give it (the first of
the gateways, in a random order, that accepts the upgrade), pings every 30 s and treats a missing
`pong` within 10 s as a dead socket, reconnects at once after 1012 (to another gateway first) and
with a 1 s → 60 s doubling backoff plus jitter after anything else. It acks every command it is
handed `received` → `executing` → `completed`, each ack sent exactly once over the socket it has
at that moment (an ack is never repeated: one that dies inside a gateway stays dead). It
remembers the command ids it has executed, and notes every one handed to it again.

Run as `python -m soak.agents CONFIG.json`; SIGTERM stops it, after which it writes what every
agent saw (connections, deliveries, acks, error frames) to the result file the config names.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

PING_INTERVAL_S = 30.0
PONG_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
CONNECT_TIMEOUT_S = 5.0
STATUS_EVERY_S = 0.5
# How long an agent takes between its acks: a command is `received`, then `executing` a moment
# later, then `completed` once the message went out.
EXECUTING_AFTER_S = (0.02, 0.1)
COMPLETED_AFTER_S = (0.05, 0.3)
SERVICE_RESTART = 1012


@dataclass(slots=True)
class Agent:
    agent_id: str
    token: str
    gateways: list[str]
    rng: random.Random
    ws: aiohttp.ClientWebSocketResponse | None = None
    gateway: int = -1  # index of the gateway holding the socket
    conn_seq: int = 0
    declared_dead: bool = False  # the last socket missed a pong
    socket_changed: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    executed: dict[str, float] = field(default_factory=dict)  # command id -> when it was executed
    deliveries: list[list[Any]] = field(default_factory=list)  # [command_id, t, gateway, conn]
    duplicates: list[list[Any]] = field(default_factory=list)  # [command_id, t, gateway, conn]
    acks: list[list[Any]] = field(default_factory=list)  # [command_id, status, t, gateway, conn]
    unsent: list[list[Any]] = field(default_factory=list)  # [command_id, status]: the run ended first
    conns: list[list[Any]] = field(default_factory=list)  # [t_open, t_close, gateway, close_code]
    errors: list[list[Any]] = field(default_factory=list)  # [t, gateway, conn, code, message]
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def result(self) -> dict[str, Any]:
        return {
            "deliveries": self.deliveries,
            "duplicates": self.duplicates,
            "acks": self.acks,
            "unsent": self.unsent,
            "conns": self.conns,
            "errors": self.errors,
        }


class Fleet:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        seed = int(config["seed"])
        gateways = list(config["gateways"])
        self.agents = [
            Agent(agent_id, token, gateways, random.Random(f"{seed}:{agent_id}"))
            for agent_id, token in config["agents"].items()
        ]
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            runners = [asyncio.create_task(self._life(agent, http, i)) for i, agent in enumerate(self.agents)]
            reporter = asyncio.create_task(self._report())
            await self.stopping.wait()
            for agent in self.agents:
                if agent.ws is not None and not agent.ws.closed:
                    await agent.ws.close()
            await asyncio.wait(runners, timeout=5.0)
            for task in [*runners, reporter]:
                task.cancel()
            await asyncio.gather(*runners, reporter, return_exceptions=True)
            for agent in self.agents:
                for task in list(agent.tasks):
                    task.cancel()
                await asyncio.gather(*agent.tasks, return_exceptions=True)
        results = {agent.agent_id: agent.result() for agent in self.agents}
        out = Path(self.config["result_file"])
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(out)

    async def _report(self) -> None:
        path = Path(self.config["status_file"])
        while True:
            connected = sum(1 for a in self.agents if a.ws is not None and not a.ws.closed)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"connected": connected, "at": time.time()}))
            tmp.replace(path)
            await asyncio.sleep(STATUS_EVERY_S)

    async def _life(self, agent: Agent, http: aiohttp.ClientSession, index: int) -> None:
        """Connect, serve, reconnect, for as long as the run lasts."""
        backoff = BACKOFF_MIN_S
        first = index % len(agent.gateways)  # the balancer spreads the first connections evenly
        avoid: int | None = None
        while not self.stopping.is_set():
            order = self._balancer_order(agent, first, avoid)
            first = -1
            connected = await self._connect(agent, http, order)
            if not connected:
                await self._sleep(backoff * (1 + 0.3 * agent.rng.random()))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_MIN_S
            code = await self._serve(agent)
            if self.stopping.is_set():
                return
            if code == SERVICE_RESTART:
                avoid = agent.gateway  # reconnect at once; the draining replica is no longer in the pool
                continue
            avoid = None
            await self._sleep(backoff * (1 + 0.3 * agent.rng.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    @staticmethod
    def _balancer_order(agent: Agent, first: int, avoid: int | None) -> list[int]:
        order = list(range(len(agent.gateways)))
        agent.rng.shuffle(order)
        if first >= 0:
            order.remove(first)
            order.insert(0, first)
        if avoid is not None and avoid in order:
            order.remove(avoid)
            order.append(avoid)
        return order

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            pass

    async def _connect(self, agent: Agent, http: aiohttp.ClientSession, order: list[int]) -> bool:
        headers = {"Authorization": f"Bearer {agent.token}", "X-Edge-Agent-Id": agent.agent_id}
        for gateway in order:
            url = f"{agent.gateways[gateway]}/edge/ws?edge_agent_id={agent.agent_id}"
            try:
                ws = await http.ws_connect(
                    url,
                    headers=headers,
                    autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                    max_msg_size=0,
                )
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            agent.ws, agent.gateway = ws, gateway
            agent.conn_seq += 1
            agent.conns.append([time.time(), None, gateway, None])
            agent.socket_changed.set()
            agent.socket_changed = asyncio.Event()
            return True
        return False

    async def _serve(self, agent: Agent) -> int | None:
        """Read the socket until it closes; its close code (None: declared dead for want of a pong)."""
        ws = agent.ws
        assert ws is not None
        agent.declared_dead = False
        pinger = asyncio.create_task(self._ping(agent, ws))
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                    kind, data = frame["type"], frame.get("data") or {}
                except (ValueError, KeyError, TypeError):
                    continue
                if kind == "command":
                    self._handed(agent, str(data["command_id"]))
                elif kind == "pong":
                    agent.pong.set()
                elif kind == "error":
                    agent.errors.append(
                        [time.time(), agent.gateway, agent.conn_seq, data.get("code"), data.get("message")]
                    )
        finally:
            dead = agent.declared_dead
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
            agent.conns[-1][1] = time.time()
            agent.conns[-1][3] = None if dead else ws.close_code
            agent.ws = None
            agent.socket_changed.set()
            agent.socket_changed = asyncio.Event()
        return None if dead else ws.close_code

    async def _ping(self, agent: Agent, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Ping every 30 s; a pong 10 s late declares the socket dead and closes it."""
        await asyncio.sleep(agent.rng.uniform(0, PING_INTERVAL_S))
        while not ws.closed:
            agent.pong.clear()
            try:
                await ws.send_str(json.dumps({"type": "ping", "data": {}}))
                async with asyncio.timeout(PONG_TIMEOUT_S):
                    await agent.pong.wait()
            except TimeoutError:
                agent.declared_dead = True
                await ws.close()
                return
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                return
            await asyncio.sleep(PING_INTERVAL_S)

    def _handed(self, agent: Agent, command_id: str) -> None:
        now = time.time()
        agent.deliveries.append([command_id, now, agent.gateway, agent.conn_seq])
        if command_id in agent.executed:
            agent.duplicates.append([command_id, now, agent.gateway, agent.conn_seq])
        task = asyncio.create_task(self._execute(agent, command_id))
        agent.tasks.add(task)
        task.add_done_callback(agent.tasks.discard)

    async def _execute(self, agent: Agent, command_id: str) -> None:
        """Ack this delivery received → executing → completed; execute only what is new."""
        await self._ack(agent, command_id, "received")
        agent.executed.setdefault(command_id, time.time())
        await asyncio.sleep(agent.rng.uniform(*EXECUTING_AFTER_S))
        await self._ack(agent, command_id, "executing")
        await asyncio.sleep(agent.rng.uniform(*COMPLETED_AFTER_S))
        done = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await self._ack(agent, command_id, "completed", done)

    async def _ack(self, agent: Agent, command_id: str, status: str, completed_at: str | None = None) -> None:
        """Send the ack once, over the socket the agent has now (waiting for one if it has none)."""
        data: dict[str, Any] = {"command_id": command_id, "status": status, "error": None}
        if completed_at is not None:
            data["completed_at"] = completed_at
        body = json.dumps({"type": "command_ack", "data": data})
        while not self.stopping.is_set():
            ws, changed = agent.ws, agent.socket_changed
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(body)
                except (aiohttp.ClientError, ConnectionError, RuntimeError):
                    pass  # it did not go out: send it on the next socket
                else:
                    agent.acks.append([command_id, status, time.time(), agent.gateway, agent.conn_seq])
                    return
            try:
                async with asyncio.timeout(1.0):
                    await changed.wait()
            except TimeoutError:
                pass
        agent.unsent.append([command_id, status])


async def main(config: dict[str, Any]) -> None:
    fleet = Fleet(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fleet.stopping.set)
    await fleet.run()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
