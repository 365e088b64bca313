"""The MiniApp fan-out's bare baseline: one aiohttp process broadcasting each frame to its room.

`python -m benchmarks.bare_fanout PORT`. Serves the product's path, `/ws/miniapp/{session_id}`,
ignoring the token; greets each socket with a `connected` frame; each `state_update` frame gets
the room's next version and is written, encoded once, to every socket of the room, the sender
included. No auth, no validation, no NATS, no durability, no second replica, no outbox.
"""

from __future__ import annotations

import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from .bare_serve import serve


@dataclass(slots=True)
class Room:
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    version: int = 0


ROOMS = web.AppKey("rooms", defaultdict[str, Room])


async def handle_socket(request: web.Request) -> web.WebSocketResponse:
    """One member: greet it, then broadcast each of its `state_update`s to the room."""
    room = request.app[ROOMS][request.match_info["session_id"]]
    connection_id = uuid.uuid4().hex
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    room.sockets.add(ws)
    try:
        hello = {
            "connection_id": connection_id,
            "version": room.version,
            "connection_count": len(room.sockets),
        }
        await ws.send_str(orjson.dumps({"type": "connected", "data": hello}).decode())
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            body = orjson.loads(frame.data)
            if body.get("type") != "state_update":
                continue
            room.version += 1
            data = body["data"]
            update = {
                "patch": data["patch"],
                "version": room.version,
                "source": "peer",
                "user_id": connection_id,
                "connection_id": connection_id,
                "client_msg_id": data.get("client_msg_id"),
            }
            text = orjson.dumps({"type": "state_update", "data": update}).decode()
            for peer in list(room.sockets):
                if not peer.closed:
                    await peer.send_str(text)
    finally:
        room.sockets.discard(ws)
    return ws


async def readyz(request: web.Request) -> web.Response:
    """Ready once listening."""
    return web.Response(text="ok")


async def create_app() -> web.Application:
    """The app and its rooms."""
    app = web.Application()
    app[ROOMS] = defaultdict(Room)
    app.router.add_get("/ws/miniapp/{session_id}", handle_socket)
    app.router.add_get("/readyz", readyz)
    return app


if __name__ == "__main__":
    serve(create_app, int(sys.argv[1]))
