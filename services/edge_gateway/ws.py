"""`GET /edge/ws`: authenticate before the upgrade, then one reader per socket until it closes."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WSCloseCode

from shared.errors import ErrorCode
from shared.service import accepts_sockets

from .connection import EdgeConnection
from .handlers import handle_frame
from .handshake import HandshakeRefused, authenticate, error_response
from .keys import GATEWAY
from .upstream import Upstream

log = logging.getLogger(__name__)

# How long a close waits for the peer's close frame before dropping the connection.
CLOSE_TIMEOUT_S = 2.0


async def edge_ws(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    metrics = gateway.metrics
    if not accepts_sockets(request.app):
        metrics.handshakes.labels(outcome="draining").inc()
        return error_response(503, ErrorCode.UNAVAILABLE, "gateway is shutting down, reconnect elsewhere")
    try:
        identity = authenticate(request, settings, socket=True)
    except HandshakeRefused as refused:
        metrics.handshakes.labels(outcome=refused.outcome).inc()
        log.info("edge handshake refused: %s", refused.message, extra={"status": refused.status})
        return refused.response()

    # aiohttp refuses a frame of exactly `max_msg_size` bytes; the contract allows up to the limit,
    # so aiohttp gets one byte more and `read_frames` refuses what is over.
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes + 1, timeout=CLOSE_TIMEOUT_S, autoping=True
    )
    await ws.prepare(request)
    metrics.handshakes.labels(outcome="accepted").inc()
    conn = EdgeConnection(
        ws,
        request.transport,
        identity.edge_agent_id,
        metrics,
        settings.send_timeout_s,
        settings.max_bad_frames_per_min,
        gateway.close_soon,
    )
    log.info(
        "edge agent connected",
        extra={
            "edge_agent_id": conn.edge_agent_id,
            "connection_id": conn.connection_id,
            "legacy": identity.legacy,
        },
    )
    pusher: asyncio.Task[None] | None = None
    try:
        await gateway.open(conn)
        pusher = asyncio.create_task(gateway.push_pending(conn))
        await read_frames(conn, gateway.upstream, settings.idle_timeout_s, settings.max_frame_bytes)
    except Exception:
        log.exception("edge socket failed", extra={"edge_agent_id": conn.edge_agent_id})
        await conn.close(WSCloseCode.INTERNAL_ERROR, "internal error")
    finally:
        # aiohttp may cancel this handler once the peer is gone: the cleanup (presence release
        # above all) runs in a task the gateway owns, so that cannot cut it short.
        await asyncio.shield(gateway.finish(conn, pusher))
    return ws


async def read_frames(
    conn: EdgeConnection, upstream: Upstream, idle_timeout_s: float, max_frame_bytes: int
) -> None:
    ws = conn.ws
    while not ws.closed:
        try:
            msg = await ws.receive(timeout=idle_timeout_s)
        except TimeoutError:
            await conn.close(WSCloseCode.GOING_AWAY, "idle timeout")
            return
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
            if len(raw) > max_frame_bytes:
                await conn.close(WSCloseCode.MESSAGE_TOO_BIG, "frame too big")
                return
            await handle_frame(conn, raw, upstream)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
