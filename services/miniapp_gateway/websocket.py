"""`GET /ws/miniapp/{session_id}?token=<jwt>`: handshake and admission of one socket.

Browsers cannot read the status of a refused upgrade, so refusals complete the upgrade and close
with a code and a reason: 4400 malformed session id, 4001 bad token, 4003 not allowed (or from an
origin not allowed), 4029 session full (or the user holds too many of its sockets). Only a
draining replica answers before the upgrade (503), so a load balancer sends the browser elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiohttp import web

from shared.broker.connection import NATS_ERRORS
from shared.protocol.errors import CloseCode, ErrorCode
from shared.protocol.subjects import is_token
from shared.runtime.service import accepts_sockets
from shared.supabase import TokenError

from .connection import Connection
from .gateway import GATEWAY, Gateway
from .hub import NotMember, SessionFull

log = logging.getLogger(__name__)


async def handle_socket(request: web.Request) -> web.StreamResponse:
    if not accepts_sockets(request.app):
        body = {"error": {"code": ErrorCode.UNAVAILABLE, "message": "draining, reconnect elsewhere"}}
        return web.json_response(body, status=503)
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    # aiohttp refuses an uncompressed frame of exactly `max_msg_size` bytes, and the contract allows
    # up to the limit; `read_frames` refuses what is over it (a deflated frame's off-by-one included).
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes + 1, heartbeat=settings.ws_heartbeat_s)
    await ws.prepare(request)

    session_id = request.match_info.get("session_id", "")
    if not settings.allows_origin(request.headers.get("Origin")):
        return await _refuse(ws, gateway, "forbidden", CloseCode.FORBIDDEN, "origin not allowed")
    if not is_token(session_id):
        return await _refuse(ws, gateway, "bad_session_id", CloseCode.BAD_SESSION_ID, "malformed session id")
    try:
        claims = await gateway.verifier.verify(request.query.get("token", ""))
    except TokenError as err:
        return await _refuse(ws, gateway, "unauthorized", CloseCode.UNAUTHORIZED, err.message)
    if not settings.allows_role(claims.role):
        return await _refuse(ws, gateway, "forbidden", CloseCode.FORBIDDEN, "role not allowed in sessions")

    conn = Connection(
        ws, request.transport, session_id, claims.sub, uuid.uuid4().hex, settings, gateway.metrics
    )
    try:
        session = await gateway.hub.join(conn)
    except NotMember as err:
        return await _refuse(ws, gateway, "forbidden", CloseCode.FORBIDDEN, err.message)
    except SessionFull as err:
        return await _refuse(ws, gateway, "session_full", CloseCode.SESSION_FULL, err.message)
    except NATS_ERRORS as err:
        log.warning("cannot admit a socket: %s", err)
        return await _refuse(ws, gateway, "unavailable", CloseCode.TRY_AGAIN_LATER, "try again later")
    await gateway.serve(conn, session, claims.exp)
    return ws


async def _refuse(
    ws: web.WebSocketResponse, gateway: Gateway, outcome: str, code: int, reason: str
) -> web.WebSocketResponse:
    gateway.metrics.handshakes.labels(outcome=outcome).inc()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await ws.close(code=code, message=reason.encode()[:120])
    return ws
