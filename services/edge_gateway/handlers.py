"""Frames from an edge agent: one parse, one dict lookup from `type` to `handle_<type>`.

An unusable frame is answered with an `error` frame and the socket stays open; more than the
allowance per minute closes it with 1008.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.http_websocket import WSCloseCode
from pydantic import ValidationError

from shared import jsonutil
from shared.commands import describe
from shared.edge_protocol import EDGE_INBOUND, MAX_STATUS_BYTES, CommandAckFrame, PingFrame, StatusFrame
from shared.errors import ErrorCode, IkiroError

from .connection import EdgeConnection
from .upstream import Upstream

log = logging.getLogger(__name__)


async def handle_ping(conn: EdgeConnection, frame: PingFrame, upstream: Upstream) -> None:
    await conn.send("pong", {})


async def handle_command_ack(conn: EdgeConnection, frame: CommandAckFrame, upstream: Upstream) -> None:
    try:
        await upstream.ack(conn.edge_agent_id, conn.connection_id, frame.data)
    except IkiroError as err:
        await conn.send_error(err.code, err.message)


async def handle_status(conn: EdgeConnection, frame: StatusFrame, upstream: Upstream) -> None:
    if len(jsonutil.dumps(frame.data)) > MAX_STATUS_BYTES:
        await reject(conn, ErrorCode.TOO_LARGE, f"status is over {MAX_STATUS_BYTES} bytes and was not kept")
        return
    await upstream.status(conn.edge_agent_id, frame.data)


HANDLERS: dict[str, Callable[[EdgeConnection, Any, Upstream], Awaitable[None]]] = {
    "ping": handle_ping,
    "command_ack": handle_command_ack,
    "status": handle_status,
}


async def handle_frame(conn: EdgeConnection, raw: str | bytes, upstream: Upstream) -> None:
    conn.last_seen = jsonutil.utcnow()
    try:
        parsed = EDGE_INBOUND.validate_json(raw)
    except ValidationError as err:
        code, message = classify(err)
        conn.metrics.frames_in.labels(type="invalid").inc()
        await reject(conn, code, message)
        return
    conn.metrics.frames_in.labels(type=parsed.type).inc()
    await HANDLERS[parsed.type](conn, parsed, upstream)


def classify(err: ValidationError) -> tuple[ErrorCode, str]:
    """The error code for a frame that failed to parse: bad JSON, unknown type, or bad fields."""
    first = err.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return ErrorCode.INVALID_JSON, "frame is not valid JSON"
    if kind == "union_tag_invalid":
        return ErrorCode.UNKNOWN_TYPE, f"unknown frame type {first['input']!r:.64}"
    if kind in ("union_tag_not_found", "model_attributes_type"):
        return ErrorCode.INVALID_FRAME, "frame must be an object {type, data}"
    return ErrorCode.INVALID_FRAME, describe(err)


async def reject(conn: EdgeConnection, code: ErrorCode, message: str) -> None:
    await conn.send_error(code, message)
    if conn.bad_frame():
        await conn.close(WSCloseCode.POLICY_VIOLATION, "too many unusable frames")
