"""Frames from an edge agent: one parse, one dict lookup from `type` to `handle_<type>`.

An unusable frame is answered with an `error` frame and the socket stays open; more than the
allowance per minute closes it with 1008.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from shared.protocol import codec
from shared.protocol.edge import EDGE_INBOUND, MAX_STATUS_BYTES, CommandAckFrame, PingFrame, StatusFrame
from shared.protocol.errors import CloseCode, ErrorCode, IkiroError, refusal

from .connection import EdgeConnection
from .upstream import Upstream

PONG = codec.encode("pong", {})


async def handle_ping(conn: EdgeConnection, upstream: Upstream, frame: PingFrame) -> None:
    conn.send("pong", PONG)


async def handle_command_ack(conn: EdgeConnection, upstream: Upstream, frame: CommandAckFrame) -> None:
    await upstream.queue_ack(conn, frame.data)


async def handle_status(conn: EdgeConnection, upstream: Upstream, frame: StatusFrame) -> None:
    if len(codec.dumps(frame.data)) > MAX_STATUS_BYTES:
        reject(
            conn, IkiroError(f"status is over {MAX_STATUS_BYTES} bytes and was not kept", ErrorCode.TOO_LARGE)
        )
        return
    if not conn.may_report_status():
        # Not an unusable frame (no 1008 for it): the next status, a little later, is kept.
        too_fast = IkiroError(
            "status frames are coming too fast; this one was not kept", ErrorCode.RATE_LIMITED
        )
        conn.send("error", codec.error_frame(too_fast))
        return
    await upstream.status(conn.edge_agent_id, frame.data)


HANDLERS: dict[str, Callable[[EdgeConnection, Upstream, Any], Awaitable[None]]] = {
    "ping": handle_ping,
    "command_ack": handle_command_ack,
    "status": handle_status,
}


async def handle_frame(conn: EdgeConnection, upstream: Upstream, raw: bytes) -> None:
    conn.last_seen = codec.utcnow()
    try:
        parsed = EDGE_INBOUND.validate_json(raw)
    except ValidationError as err:
        conn.metrics.frames_in("invalid").inc()
        reject(conn, refusal(err, ErrorCode.INVALID_FRAME))
        return
    conn.metrics.frames_in(parsed.type).inc()
    await HANDLERS[parsed.type](conn, upstream, parsed)


def reject(conn: EdgeConnection, err: IkiroError) -> None:
    conn.send("error", codec.error_frame(err))
    if conn.bad_frames.record():
        conn.close_soon(CloseCode.POLICY_VIOLATION, "too many unusable frames")
