"""Print latency, throughput and memory per connection of the edge path and of a bare baseline.

Both are measured in the same run on the same broker, because these machines are noisy; the
ratio is the figure to compare across runs.

    python -m benchmarks [--commands 2000] [--agents 50] [--concurrency 64] [--connections 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import nats
from nats.aio.msg import Msg

from devtools.natsserver import NatsServer, free_port
from shared.auth import generate_edge_token
from shared.client import CommandClient
from shared.protocol import subjects

SECRET = "bench-secret"
ROOT = Path(__file__).resolve().parent.parent


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": qs[49] * 1000, "p95": qs[94] * 1000, "p99": qs[98] * 1000}


class Proc:
    def __init__(self, args: list[str], port: int, env: dict[str, str]) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"},
        )

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.proc.args!r} not ready")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_load(
    send: Callable[[int], Awaitable[None]], commands: int, concurrency: int
) -> tuple[list[float], float]:
    """Call `send(i)` `commands` times, `concurrency` at once; latencies and commands/s."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with slots:
            t0 = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(commands)))
    return latencies, commands / (time.perf_counter() - start)


class Agents:
    """Client-side sockets and their reader tasks, kept referenced until `close`."""

    def __init__(self) -> None:
        # limit=0: the default pool of 100 connections would hold the 101st socket forever.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.tasks: list[asyncio.Task[None]] = []

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


async def agents_acking(agents: Agents, url: str, ids: list[str], full_flow: bool) -> None:
    """Connect one socket per id; each acks every command as real agents do."""
    session = agents.session
    statuses = ("received", "executing", "completed") if full_flow else ("completed",)
    for agent in ids:
        headers = {
            "Authorization": f"Bearer {generate_edge_token(agent, '+1', SECRET)}",
            "X-Edge-Agent-Id": agent,
        }
        ws = await session.ws_connect(f"{url}?edge_agent_id={agent}", headers=headers)

        async def ack_loop(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame["type"] == "command":
                    for status in statuses:
                        data = {"command_id": frame["data"]["command_id"], "status": status, "error": None}
                        await ws.send_str(json.dumps({"type": "command_ack", "data": data}))

        agents.tasks.append(asyncio.create_task(ack_loop()))


async def memory_per_socket(server: Proc, agents: Agents, path: str, count: int) -> float:
    """Resident memory the server grows by per idle socket, measured by opening `count` more."""
    before = server.rss_kib()
    idle = [f"idle-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    await agents_acking(agents, f"ws://127.0.0.1:{server.port}{path}", idle, full_flow=False)
    await asyncio.sleep(1)  # let the server finish per-socket setup (presence, pull) before reading RSS
    return (server.rss_kib() - before) * 1024 / count


async def bench_product(nats_url: str, args: argparse.Namespace) -> dict[str, float]:
    env = {"NATS_URL": nats_url, "EDGE_SECRET": SECRET}
    dispatcher = Proc([sys.executable, "-m", "services.command_dispatcher"], free_port(), env)
    gateway = Proc([sys.executable, "-m", "services.edge_gateway"], free_port(), env)
    await dispatcher.ready()
    await gateway.ready()
    nc = await nats.connect(nats_url)
    agents = Agents()
    try:
        client = CommandClient(nc)
        ids = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(args.agents)]
        done: dict[str, asyncio.Future[None]] = {}

        async def on_final(msg: Msg) -> None:
            event = json.loads(msg.data)
            if event["state"] == "completed" and (fut := done.pop(event["command_id"], None)):
                fut.set_result(None)

        await nc.subscribe(subjects.LIFECYCLE_ALL, cb=on_final)
        await agents_acking(agents, f"ws://127.0.0.1:{gateway.port}/edge/ws", ids, full_flow=True)

        async def send(i: int) -> None:
            cid = str(uuid.uuid4())
            done[cid] = asyncio.get_running_loop().create_future()
            await client.submit(
                ids[i % len(ids)], "send_message_now", {"thread_id": "t", "text": "x"}, command_id=cid
            )
            await asyncio.wait_for(done[cid], 30) if cid in done else None

        latencies, throughput = await run_load(send, args.commands, args.concurrency)
        per_conn = await memory_per_socket(gateway, agents, "/edge/ws", args.connections)
        return {**percentiles(latencies), "throughput": throughput, "bytes_per_conn": per_conn}
    finally:
        await agents.close()
        await nc.close()
        gateway.stop()
        dispatcher.stop()


async def bench_baseline(nats_url: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    server = Proc([sys.executable, "-m", "benchmarks.baseline", str(port)], port, {"NATS_URL": nats_url})
    await server.ready()
    nc = await nats.connect(nats_url)
    agents = Agents()
    try:
        ids = [f"base-{uuid.uuid4().hex[:8]}-{i}" for i in range(args.agents)]
        await agents_acking(agents, f"ws://127.0.0.1:{port}/ws", ids, full_flow=False)
        await asyncio.sleep(0.5)

        async def send(i: int) -> None:
            body = json.dumps({"command_id": str(uuid.uuid4()), "payload": {"thread_id": "t", "text": "x"}})
            await nc.request(f"bench.deliver.{ids[i % len(ids)]}", body.encode(), timeout=30)

        latencies, throughput = await run_load(send, args.commands, args.concurrency)
        per_conn = await memory_per_socket(server, agents, "/ws", args.connections)
        return {**percentiles(latencies), "throughput": throughput, "bytes_per_conn": per_conn}
    finally:
        await agents.close()
        await nc.close()
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--connections", type=int, default=1000, help="idle sockets for memory per connection"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        broker = NatsServer(Path(store))
        broker.start()
        try:
            baseline = await bench_baseline(broker.url, args)
            product = await bench_product(broker.url, args)
        finally:
            broker.stop()
    load = f"{args.commands} commands over {args.agents} agents, {args.concurrency} in flight"
    print(f"\nedge command path, {load}")
    print("(product: submit -> durable -> socket -> received/executing/completed acks -> lifecycle event;")
    print(" baseline: NATS request -> socket -> one ack -> reply; no auth, no validation, no durability)\n")
    print(f"{'':<24}{'baseline':>14}{'product':>14}{'ratio':>10}")
    rows = [
        ("latency p50 (ms)", "p50"),
        ("latency p95 (ms)", "p95"),
        ("latency p99 (ms)", "p99"),
        ("throughput (cmd/s)", "throughput"),
        ("memory per socket (B)", "bytes_per_conn"),
    ]
    for label, key in rows:
        ratio = product[key] / baseline[key] if baseline[key] else float("nan")
        print(f"{label:<24}{baseline[key]:>14.1f}{product[key]:>14.1f}{ratio:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
