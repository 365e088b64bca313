"""`GET /edge/ws`: authenticate before the upgrade, then the socket lives in a task the gateway owns."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from shared.broker.connection import NATS_ERRORS
from shared.protocol.errors import ErrorCode, IkiroError
from shared.runtime.service import accepts_sockets
from shared.runtime.socket import Outbox

from .connection import EdgeConnection
from .gateway import GATEWAY
from .handshake import HandshakeRefused, authenticate, error_response

log = logging.getLogger(__name__)


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
    # autoclose off: the socket does its own close handshake, reading the agent's frames up to its
    # close frame (EdgeConnection.READ_THROUGH_CLOSE).
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes + 1, autoping=True, autoclose=False)
    conn = EdgeConnection(
        ws,
        request.transport,
        identity.edge_agent_id,
        metrics,
        Outbox(settings.outbox_max_frames, settings.outbox_max_bytes),
        settings.send_timeout_s,
        settings.max_bad_frames_per_min,
    )
    # Registered before the upgrade: a socket the rest of the system cannot reach is never opened,
    # so nothing an agent sends is read on one that is closed a moment later (its acks lost).
    try:
        await gateway.open(conn)
    except (IkiroError, *NATS_ERRORS) as err:
        await gateway.close(conn)
        metrics.handshakes.labels(outcome="unavailable").inc()
        log.warning("edge connection not registered: %s", err, extra={"edge_agent_id": conn.edge_agent_id})
        return error_response(503, ErrorCode.UNAVAILABLE, "connection could not be registered, reconnect")
    try:
        await ws.prepare(request)
    except BaseException:
        await asyncio.shield(gateway.close(conn))
        raise
    metrics.handshakes.labels(outcome="accepted").inc()
    log.info(
        "edge agent connected",
        extra={
            "edge_agent_id": conn.edge_agent_id,
            "connection_id": conn.connection_id,
            "legacy": identity.legacy,
        },
    )
    await gateway.serve(conn)
    return ws
