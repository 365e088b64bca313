"""Edge agents as load: WebSocket clients that ack each command `received`, `executing`, `completed`.

`python -m benchmarks.edge_agents --prefix P --first I --count N --secret S`, driven over
stdin/stdout (`control`). Each agent sends what deployed agents send: the HMAC token as bearer,
`X-Edge-Agent-Id`, `?edge_agent_id=`, and the three acks in order (the last with `completed_at`)
for every `command` frame. The bare relay is driven by the same agents, so both see the same
client work. A socket that dies stays down until the next `connect` op (the reconnect storm
decides when agents come back).

Ops:
- `connect {url, concurrency}`: connect every agent whose socket is not open, at most
  `concurrency` handshakes at once (0: all at once); reply when all are up, with monotonic
  timestamps (system-wide on Linux, so comparable across processes) and handshake latencies.
- `stats`: open sockets, commands received, distinct command ids, duplicates, closes seen by code.
- `close`: close every socket (1000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from shared.auth import generate_edge_token

from . import control
from .stats import summary

USER_PHONE = "+15550100"
CONNECT_ATTEMPTS = 8
CONNECT_TIMEOUT_S = 30.0


def agent_ids(prefix: str, first: int, count: int) -> list[str]:
    """`count` agent ids from `first`: `<prefix><n>`."""
    return [f"{prefix}{i}" for i in range(first, first + count)]


def ack_frame(command_id: str, status: str) -> str:
    """A `command_ack` frame as deployed agents send it."""
    data: dict[str, Any] = {"command_id": command_id, "status": status, "error": None}
    if status == "completed":
        data["completed_at"] = datetime.now(UTC).isoformat()
    return orjson.dumps({"type": "command_ack", "data": data}).decode()


class Agents:
    """This process's agents: their sockets, reader tasks and what they received."""

    def __init__(self, ids: list[str], secret: str) -> None:
        self.ids = ids
        self.secret = secret
        # limit=0: the default pool of 100 connections would hold the 101st socket forever.
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.readers: set[asyncio.Task[None]] = set()
        self.received = 0
        self.seen: set[str] = set()
        self.closes: Counter[str] = Counter()  # by close code

    async def connect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `connect`: open every socket that is not open."""
        url: str = args["url"]
        limit: int = args.get("concurrency", 0)
        slots = asyncio.Semaphore(limit or len(self.ids) or 1)
        handshakes: list[float] = []
        failures: list[str] = []
        started = time.monotonic()

        async def one(agent: str) -> None:
            async with slots:
                for attempt in range(CONNECT_ATTEMPTS):
                    t0 = time.monotonic()
                    try:
                        await self._open(url, agent)
                    except (aiohttp.ClientError, OSError, TimeoutError) as err:
                        if attempt == CONNECT_ATTEMPTS - 1:
                            failures.append(f"{agent}: {err!r}")
                        else:
                            await asyncio.sleep(0.2 * 2**attempt)
                        continue
                    handshakes.append((time.monotonic() - t0) * 1000)
                    return

        await asyncio.gather(*(one(a) for a in self.ids if a not in self.sockets))
        return {
            "connected": len(handshakes),
            "failed": len(failures),
            "failures": failures[:5],
            "started_at": started,
            "done_at": time.monotonic(),
            "handshake_ms": summary(handshakes),
        }

    async def _open(self, url: str, agent: str) -> None:
        headers = {
            "Authorization": f"Bearer {generate_edge_token(agent, USER_PHONE, self.secret)}",
            "X-Edge-Agent-Id": agent,
        }
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            ws = await self.http.ws_connect(f"{url}?edge_agent_id={agent}", headers=headers, autoping=True)
        self.sockets[agent] = ws
        task = asyncio.create_task(self._read(agent, ws))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, agent: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = orjson.loads(msg.data)
                if frame.get("type") != "command":
                    continue
                command_id = frame["data"]["command_id"]
                self.received += 1
                self.seen.add(command_id)
                for status in ("received", "executing", "completed"):
                    await ws.send_str(ack_frame(command_id, status))
        except (aiohttp.ClientError, OSError):
            pass
        finally:
            self.closes[str(ws.close_code)] += 1
            if self.sockets.get(agent) is ws:
                del self.sockets[agent]

    async def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        """Op `stats`: sockets and what came over them."""
        return {
            "open": len(self.sockets),
            "received": self.received,
            "distinct": len(self.seen),
            "duplicates": self.received - len(self.seen),
            "closes": dict(self.closes),
        }

    async def close(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Op `close`: close every socket with 1000."""
        sockets = list(self.sockets.values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        return {"closed": len(sockets)}

    async def shutdown(self) -> None:
        """Close sockets, reader tasks and the HTTP session."""
        await self.close()
        for task in list(self.readers):
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await self.http.close()


async def main() -> None:
    """Parse the agents' ids and secret, then answer ops."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge_agents")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    agents = Agents(agent_ids(args.prefix, args.first, args.count), args.secret)
    await control.serve_ops(
        {"connect": agents.connect, "stats": agents.stats, "close": agents.close}, agents.shutdown
    )


if __name__ == "__main__":
    control.run(main)
