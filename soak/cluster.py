"""The 3-node `nats-server` JetStream cluster on loopback: start, health, leader lookup, and its faults.

Each node keeps its client, route and monitoring ports and its store for the whole run, so a node
killed with SIGKILL comes back as the same cluster member on the same data, as a pod would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from devtools.natsserver import free_port, nats_server_binary

from .procs import Child, SoakError

CLUSTER_NAME = "ikiro"
HTTP_TIMEOUT_S = 1.0


@dataclass(slots=True)
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    child: Child

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def up(self) -> bool:
        """Running and not paused: it answers."""
        return self.child.running and not self.child.paused


class Cluster:
    def __init__(self, root: Path, log_dir: Path, http: aiohttp.ClientSession, size: int = 3) -> None:
        self.http = http
        self.nodes: list[NatsNode] = []
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{cluster}" for _, cluster, _ in ports)
        for i, (client, cluster, monitor) in enumerate(ports, start=1):
            name = f"nats-{i}"
            store = root / name
            store.mkdir(parents=True, exist_ok=True)
            argv = [
                nats_server_binary(),
                "-js",
                "-sd",
                str(store),
                "-a",
                "127.0.0.1",
                "-p",
                str(client),
                "-n",
                name,
                "-m",
                str(monitor),
                "--cluster_name",
                CLUSTER_NAME,
                "--cluster",
                f"nats://127.0.0.1:{cluster}",
                "--routes",
                routes,
            ]
            child = Child(name, argv, env={}, cwd=root, log_dir=log_dir)
            self.nodes.append(NatsNode(name, client, cluster, monitor, child))

    @property
    def urls(self) -> str:
        """Every node, as services and clients are given it (`NATS_URL`)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    async def start(self, timeout_s: float) -> None:
        for node in self.nodes:
            node.child.start()
        await self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.child.stop_now()

    async def _get(self, node: NatsNode, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{node.http_port}{path}"
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with self.http.get(url, timeout=timeout) as resp:
            return resp.status, await resp.json(content_type=None)

    async def meta_leader_name(self, node: NatsNode) -> str | None:
        """The JetStream meta leader as `node` sees it."""
        if not node.up:
            return None
        try:
            _, body = await self._get(node, "/jsz")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        meta = body.get("meta_cluster") or {}
        leader = meta.get("leader")
        return str(leader) if leader else None

    async def meta_leader(self) -> NatsNode | None:
        """The meta leader, when every answering node names the same one."""
        names = {await self.meta_leader_name(node) for node in self.nodes if node.up}
        if len(names) != 1:
            return None
        name = names.pop()
        if not name:
            return None
        leader = self.node(name)
        return leader if leader.up else None  # the others name a dead leader until they notice

    async def healthy(self, node: NatsNode) -> bool:
        """`/healthz` of a node: up, in the cluster, its JetStream assets current."""
        if not node.up:
            return False
        try:
            status, _ = await self._get(node, "/healthz")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        return status == 200

    async def wait_healthy(self, timeout_s: float) -> float:
        """Until every node is healthy and all agree on a meta leader; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.child.proc is not None and node.child.proc.poll() is not None:
                    raise SoakError(f"{node.name} exited with {node.child.proc.returncode}")
            if all([await self.healthy(node) for node in self.nodes]) and await self.meta_leader():
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise SoakError(f"the NATS cluster was not healthy within {timeout_s:.0f} s")

    async def client_connections(self, node: NatsNode) -> int:
        try:
            _, body = await self._get(node, "/varz")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0
        return int(body.get("connections", 0))
