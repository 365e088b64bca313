"""`GET /ws/miniapp/{session_id}?token=<jwt>`: handshake, admission, and the life of one socket.

Browsers cannot read the status of a refused upgrade, so refusals complete the upgrade and close
with a code and a reason (4400 malformed session id, 4001 bad token, 4003 not allowed, 4029
session full). Only a draining replica answers before the upgrade (503), so a load balancer
sends the browser elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from services.miniapp_gateway.config import MiniAppSettings
from services.miniapp_gateway.connection import Connection
from services.miniapp_gateway.handlers import Context, dispatch
from services.miniapp_gateway.hub import NATS_ERRORS, Hub, SessionFull
from services.miniapp_gateway.outbox import Outbox
from services.miniapp_gateway.presence import new_id
from services.miniapp_gateway.ratelimit import AbuseCounter, TokenBucket
from services.miniapp_gateway.sessions import LocalSession
from shared.errors import ErrorCode
from shared.service import accepts_sockets
from shared.subjects import is_token
from shared.supabase import TokenError
from shared.workers import cancel_and_wait

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003
CLOSE_SESSION_FULL = 4029
CLOSE_BAD_SESSION = 4400


@dataclass(slots=True)
class Gateway:
    """Everything a socket needs, built once when the app starts."""

    settings: MiniAppSettings
    ctx: Context
    hub: Hub
    tasks: set[asyncio.Task[Any]]  # the request handlers of open sockets


GATEWAY = web.AppKey("miniapp_gateway", Gateway)


async def handle_socket(request: web.Request) -> web.StreamResponse:
    if not accepts_sockets(request.app) or GATEWAY not in request.app:
        body = {"error": {"code": ErrorCode.UNAVAILABLE, "message": "draining, reconnect elsewhere"}}
        return web.json_response(body, status=503)
    gateway = request.app[GATEWAY]
    # The socket runs in a task the gateway owns: aiohttp may cancel this handler once the peer is
    # gone, and that must not cut short leaving the session (presence, counts).
    task = asyncio.create_task(_serve_socket(request, gateway))
    gateway.tasks.add(task)
    task.add_done_callback(gateway.tasks.discard)
    return await asyncio.shield(task)


async def _serve_socket(request: web.Request, gateway: Gateway) -> web.WebSocketResponse:
    settings, ctx, metrics = gateway.settings, gateway.ctx, gateway.ctx.metrics
    # aiohttp refuses an uncompressed frame of exactly `max_msg_size` bytes, and the contract allows
    # up to the limit; `_read_loop` refuses what is over it (a deflated frame's off-by-one included).
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes + 1, heartbeat=settings.ws_heartbeat_s, timeout=2.0
    )
    await ws.prepare(request)

    session_id = request.match_info.get("session_id", "")
    if not is_token(session_id):
        return await _refuse(ws, gateway, "bad_session_id", CLOSE_BAD_SESSION, "malformed session id")
    try:
        claims = await ctx.verifier.verify(request.query.get("token", ""))
    except TokenError as err:
        return await _refuse(ws, gateway, "unauthorized", CLOSE_UNAUTHORIZED, err.message)
    if claims.role is not None and claims.role not in settings.miniapp_allowed_roles:
        return await _refuse(ws, gateway, "forbidden", CLOSE_FORBIDDEN, "role not allowed in sessions")

    conn = Connection(
        ws,
        session_id,
        claims.sub,
        new_id(),
        Outbox(settings.outbox_max_frames, settings.outbox_max_bytes, settings.outbox_typing_drop_frames),
        TokenBucket(settings.rate_per_s, settings.rate_burst),
        AbuseCounter(settings.rate_abuse_limit, settings.rate_abuse_window_s),
        metrics,
    )
    replica_id = gateway.hub.presence.replica_id
    try:
        session = await gateway.hub.join(conn)
    except SessionFull:
        return await _refuse(ws, gateway, "session_full", CLOSE_SESSION_FULL, "session full")
    except NATS_ERRORS as err:
        log.warning("cannot admit a socket: %s", err)
        return await _refuse(ws, gateway, "unavailable", WSCloseCode.TRY_AGAIN_LATER, "try again later")
    metrics.handshakes.labels(outcome="accepted").inc()
    conn.expire_at(claims.exp, ctx.verifier.leeway_s)
    try:
        await _run(ctx, conn, session, settings.max_frame_bytes)
    finally:
        conn.stop_timers()
        await gateway.hub.leave(conn, session, replica_id)
        metrics.disconnects.labels(code=str(ws.close_code or 1006)).inc()
    return ws


async def _run(ctx: Context, conn: Connection, session: LocalSession, max_frame_bytes: int) -> None:
    """Read until the client leaves or a close is requested; then close with the right code."""
    writer = asyncio.create_task(conn.write_loop())
    reader = asyncio.create_task(_read_loop(ctx, conn, session, max_frame_bytes))
    closing = asyncio.create_task(conn.closing.wait())
    tasks = {writer, reader, closing}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
    if writer in done and not writer.cancelled() and writer.exception() is not None:
        log.info("socket write failed: %s", writer.exception(), extra={"connection_id": conn.connection_id})
    request = conn.close_request
    if request is not None:
        await conn.close(request.code, request.reason)
    else:
        await conn.close(WSCloseCode.OK, "")


async def _read_loop(ctx: Context, conn: Connection, session: LocalSession, max_frame_bytes: int) -> None:
    async for msg in conn.ws:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
            if len(raw) > max_frame_bytes:
                conn.close_soon(WSCloseCode.MESSAGE_TOO_BIG, "frame too big")
                return
            await dispatch(ctx, conn, session, raw)
        elif msg.type is WSMsgType.ERROR:
            log.info("socket error: %s", conn.ws.exception(), extra={"connection_id": conn.connection_id})


async def _refuse(
    ws: web.WebSocketResponse, gateway: Gateway, outcome: str, code: int, reason: str
) -> web.WebSocketResponse:
    gateway.ctx.metrics.handshakes.labels(outcome=outcome).inc()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await ws.close(code=code, message=reason.encode()[:120])
    return ws
