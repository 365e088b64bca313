"""The edge path's bare baseline: an aiohttp WebSocket server relaying NATS requests to agents' sockets.

`python -m benchmarks.bare_edge_relay PORT` (NATS_URL from the environment). One NATS
subscription per socket on `bench.deliver.<agent>`; a request is written to the agent's socket
as a `command` frame and answered once the agent acks it `completed` (agents send the same
received / executing / completed acks as to the product). No auth, no validation, no
durability, no lifecycle events: what the product does beyond this is what the ratio prices.
Same stack as the product: aiohttp on uvloop, nats-py, orjson.
"""

from __future__ import annotations

import os
import sys

import nats
import orjson
from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .bare_serve import serve

NC = web.AppKey("nc", NATS)
FINAL = frozenset({"completed", "failed"})


def deliver_subject(edge_agent_id: str) -> str:
    """The bare relay's per-agent request subject."""
    return f"bench.deliver.{edge_agent_id}"


async def handle_socket(request: web.Request) -> web.WebSocketResponse:
    """One agent's socket: relay requests to it, answer them at its `completed` ack."""
    nc = request.app[NC]
    agent = request.query["edge_agent_id"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    waiting: dict[str, str] = {}

    async def on_request(msg: Msg) -> None:
        command = orjson.loads(msg.data)
        if msg.reply:
            waiting[command["command_id"]] = msg.reply
        await ws.send_str(orjson.dumps({"type": "command", "data": command}).decode())

    sub = await nc.subscribe(deliver_subject(agent), cb=on_request)
    try:
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            data = orjson.loads(frame.data)["data"]
            if data["status"] in FINAL and (reply := waiting.pop(data["command_id"], None)):
                await nc.publish(reply, b"ok")
    finally:
        await sub.unsubscribe()
    return ws


async def readyz(request: web.Request) -> web.Response:
    """Ready once listening."""
    return web.Response(text="ok")


async def create_app() -> web.Application:
    """The app with its NATS connection."""
    app = web.Application()
    app[NC] = await nats.connect(os.environ["NATS_URL"])
    app.router.add_get("/edge/ws", handle_socket)
    app.router.add_get("/readyz", readyz)
    app.on_cleanup.append(close_nats)
    return app


async def close_nats(app: web.Application) -> None:
    """Close the NATS connection with the app."""
    await app[NC].close()


if __name__ == "__main__":
    serve(create_app, int(sys.argv[1]))
