"""The baseline: a bare aiohttp WebSocket server relaying NATS requests to sockets, nothing else.

No auth, no validation, no durability: one NATS subscription per socket, the request's reply
answered when the socket acks. What the product does beyond this is what the ratio prices.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import nats
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

NC = web.AppKey("nc", NATS)


async def socket_handler(request: web.Request) -> web.WebSocketResponse:
    nc = request.app[NC]
    agent = request.query["edge_agent_id"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    waiting: dict[str, str] = {}

    async def on_request(msg: Msg) -> None:
        command = json.loads(msg.data)
        if msg.reply:
            waiting[command["command_id"]] = msg.reply
        await ws.send_str(json.dumps({"type": "command", "data": command}))

    sub = await nc.subscribe(f"bench.deliver.{agent}", cb=on_request)
    async for frame in ws:
        data = json.loads(frame.data)["data"]
        reply = waiting.pop(data["command_id"], None)
        if reply:
            await nc.publish(reply, b"ok")
    await sub.unsubscribe()
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def create_app(nats_url: str) -> web.Application:
    app = web.Application()
    app[NC] = await nats.connect(nats_url)
    app.router.add_get("/ws", socket_handler)
    app.router.add_get("/readyz", healthz)
    return app


def main() -> None:
    web.run_app(create_app(os.environ["NATS_URL"]), host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
