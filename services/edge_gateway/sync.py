"""`POST /edge/sync`: the HTTP fallback an agent polls while its socket is down (DESIGN section 3)."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web
from pydantic import ValidationError

from shared.broker.connection import NATS_ERRORS
from shared.protocol import codec
from shared.protocol.commands import AgentAck
from shared.protocol.edge import MAX_STATUS_BYTES, MAX_SYNC_BODY_BYTES, SYNC_REQUEST, SyncResponse
from shared.protocol.errors import ErrorCode, IkiroError, describe

from .gateway import GATEWAY
from .handshake import HandshakeRefused, authenticate, error_response

log = logging.getLogger(__name__)


async def edge_sync(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    response = await _sync(request)
    gateway.metrics.sync_requests.labels(status=str(response.status)).inc()
    gateway.metrics.sync_duration.observe(time.perf_counter() - started)
    return response


async def _sync(request: web.Request) -> web.Response:
    """Who is calling is decided from the headers alone, before a byte of the body is read: a
    caller without a valid token, or over its rate, costs no body read and no JSON parse."""
    gateway = request.app[GATEWAY]
    upstream = gateway.upstream
    try:
        identity = authenticate(request, gateway.settings, socket=False)
    except HandshakeRefused as refused:
        return _unread(refused.response())
    agent = identity.edge_agent_id
    retry_after = gateway.sync_limiter.retry_after(agent)
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
        return _unread(error_response(429, ErrorCode.RATE_LIMITED, "too many sync requests", headers))
    too_large = error_response(413, ErrorCode.TOO_LARGE, f"body over {MAX_SYNC_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_SYNC_BODY_BYTES:
        return _unread(too_large)
    try:
        # The app reads at most MAX_SYNC_BODY_BYTES + 1 (a chunked body has no length to check first).
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _unread(too_large)
    if len(raw) > MAX_SYNC_BODY_BYTES:
        return _unread(too_large)
    try:
        body = SYNC_REQUEST.validate_json(raw)
    except ValidationError as err:
        return error_response(422, ErrorCode.INVALID_REQUEST, describe(err))
    if body.edge_agent_id != agent:
        return error_response(403, ErrorCode.FORBIDDEN, "body edge_agent_id is another agent")
    if len(codec.dumps(body.status)) > MAX_STATUS_BYTES:
        return error_response(422, ErrorCode.TOO_LARGE, f"status is over {MAX_STATUS_BYTES} bytes")

    connection_id = f"sync-{uuid.uuid4().hex}"
    try:
        if body.acks:
            await upstream.acks(
                [AgentAck(edge_agent_id=agent, connection_id=connection_id, ack=ack) for ack in body.acks]
            )
        if body.status:
            await upstream.status(agent, body.status)
        accepted = await upstream.events(agent, body.pending_events)
        await upstream.synced(agent, str(body.last_command_id) if body.last_command_id else None)
        commands = await upstream.pull(agent, connection_id, via_socket=False)
    except (IkiroError, *NATS_ERRORS) as err:
        log.warning("sync failed: %s", err, extra={"edge_agent_id": agent})
        return error_response(503, ErrorCode.UNAVAILABLE, "dispatcher unavailable, retry later")
    reply = SyncResponse(commands=commands, ack_events=accepted, config_updates={})
    return web.json_response(body=reply.model_dump_json().encode(), content_type="application/json")


def _unread(response: web.Response) -> web.Response:
    """Close the connection after `response` instead of reading and discarding the rest of the body."""
    response.force_close()
    return response
