"""One edge agent's socket: sending with a bound, closing with a code, counting unusable frames."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_websocket import WSCloseCode
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared import jsonutil
from shared.agents import DELIVER_REQUEST
from shared.edge_protocol import frame
from shared.errors import ErrorCode, NotFound, error_body
from shared.metrics import EdgeGatewayMetrics

log = logging.getLogger(__name__)

REPLACED = 4000
# A close waits this long for the peer's close handshake (aiohttp's own wait is shorter).
CLOSE_TIMEOUT_S = 3.0


class EdgeConnection:
    """State kept per socket is deliberately small: 10k of these live in one process."""

    __slots__ = (
        "_bad_frames",
        "close_code",
        "close_soon",
        "closing",
        "connection_id",
        "edge_agent_id",
        "epoch",
        "last_seen",
        "max_bad_frames",
        "metrics",
        "newest_epoch_seen",
        "send_timeout_s",
        "subscription",
        "transport",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        edge_agent_id: str,
        metrics: EdgeGatewayMetrics,
        send_timeout_s: float,
        max_bad_frames: int,
        close_soon: Callable[[EdgeConnection, int, str], None],
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.edge_agent_id = edge_agent_id
        self.connection_id = uuid.uuid4().hex
        self.metrics = metrics
        self.send_timeout_s = send_timeout_s
        self.max_bad_frames = max_bad_frames
        self.epoch = 0  # known once the presence claim is written
        self.newest_epoch_seen = 0  # highest epoch another socket of this agent announced
        self.last_seen = jsonutil.utcnow()
        self.subscription: Subscription | None = None
        self.closing = False
        self.close_soon = close_soon
        self.close_code: int | None = None  # the code this side decided on, if it closed first
        self._bad_frames: deque[float] = deque(maxlen=max_bad_frames + 1)

    async def send(self, type_: str, data: Any) -> bool:
        """Write one frame; a peer too slow to take it within the bound is cut off (1013)."""
        if self.closing or self.ws.closed:
            return False
        try:
            async with asyncio.timeout(self.send_timeout_s):
                # Text frames: the envelope is JSON, and clients parse text messages as such.
                await self.ws.send_str(jsonutil.dumps(frame(type_, data)).decode())
        except TimeoutError:
            # Closed from a task of its own: this one may be a NATS callback that must not wait.
            self.close_soon(self, WSCloseCode.TRY_AGAIN_LATER, "too slow to read")
            return False
        except (ConnectionError, RuntimeError):
            return False
        self.metrics.frames_out.labels(type=type_).inc()
        return True

    async def send_error(self, code: ErrorCode, message: str) -> None:
        await self.send("error", {"code": str(code), "message": message})

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            # aiohttp shares one drain waiter per connection: a send cancelled by its timeout
            # cancels it, and our close then sees that. Only a cancellation of this task is real.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        if self.transport is not None and self.transport.get_write_buffer_size():
            # The peer reads nothing, not even the close frame queued behind its unread data:
            # cut the connection, or its buffers would be held until TCP gives up.
            self.transport.abort()

    def bad_frame(self) -> bool:
        """Count an unusable frame; True once the one-minute allowance is used up."""
        now = time.monotonic()
        self._bad_frames.append(now)
        return len(self._bad_frames) > self.max_bad_frames and now - self._bad_frames[0] < 60.0

    def saw_newer(self, epoch: int) -> bool:
        """Note another socket's epoch; True when this socket is now the older one."""
        self.newest_epoch_seen = max(self.newest_epoch_seen, epoch)
        return 0 < self.epoch < self.newest_epoch_seen

    async def on_deliver(self, msg: Msg) -> None:
        """A dispatcher's request on `edge.deliver.<id>`: push the command, or answer a probe."""
        try:
            req = DELIVER_REQUEST.validate_json(msg.data)
        except ValidationError:
            return
        if req.connection_id != self.connection_id:
            # Meant for a newer (or older) socket of this agent: stay silent, let that one answer.
            return
        if req.command is None:
            reply: dict[str, Any] = {"ok": True, "last_seen": jsonutil.iso(self.last_seen)}
        elif await self.send("command", req.command.model_dump(mode="json")):
            reply = {"ok": True}
            self.metrics.deliveries.labels(result="pushed").inc()
        else:
            reply = {"ok": False, "error": error_body(NotFound("socket closed"))}
            self.metrics.deliveries.labels(result="closed").inc()
        if msg.reply:
            await msg.respond(jsonutil.dumps(reply))
