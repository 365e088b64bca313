"""One edge agent's socket: who it is, its place among the agent's sockets, and deliveries to it."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from shared.protocol import codec
from shared.protocol.errors import NotFound, error_body
from shared.runtime.ratelimit import TokenBucket, WindowCounter
from shared.runtime.socket import Outbox, ServerSocket

from .metrics import EdgeGatewayMetrics

BAD_FRAME_WINDOW_S = 60.0
# Acks of one socket on their way to a dispatcher; past it the socket is not read until some have
# gone (TCP pushes back on the agent), so an agent acking faster than dispatchers apply cannot
# grow the gateway's memory. A real agent has three acks per command in flight at most.
MAX_ACKS_IN_FLIGHT = 1000
# Each status is a KV write and an event: an agent reports a few a minute, a loop would flood both.
STATUS_RATE_PER_S = 5.0
STATUS_BURST = 20
OK = codec.dumps({"ok": True})


class EdgeConnection(ServerSocket):
    __slots__ = (
        "_ack_room",
        "acks_in_flight",
        "bad_frames",
        "connected_at",
        "connection_id",
        "edge_agent_id",
        "epoch",
        "last_seen",
        "newest_epoch_seen",
        "status_limit",
    )
    metrics: EdgeGatewayMetrics
    # Acks the agent sent before it saw our close (a drain's 1012, say) are still applied.
    READ_THROUGH_CLOSE = True

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        edge_agent_id: str,
        metrics: EdgeGatewayMetrics,
        outbox: Outbox,
        send_timeout_s: float,
        max_bad_frames: int,
    ) -> None:
        super().__init__(ws, transport, outbox, metrics, send_timeout_s)
        self.edge_agent_id = edge_agent_id
        self.connection_id = uuid.uuid4().hex
        self.epoch = 0  # the revision of its presence claim, once written
        self.newest_epoch_seen = 0  # highest epoch another socket of this agent announced
        self.connected_at = self.last_seen = codec.utcnow()
        self.bad_frames = WindowCounter(max_bad_frames, BAD_FRAME_WINDOW_S)
        self.acks_in_flight = 0
        self.status_limit: TokenBucket | None = None  # made at the first status frame
        self._ack_room: asyncio.Event | None = None  # only while the reader waits for room

    def may_report_status(self) -> bool:
        if self.status_limit is None:
            self.status_limit = TokenBucket(STATUS_RATE_PER_S, STATUS_BURST)
        return self.status_limit.take()

    async def ack_room(self) -> None:
        """Wait, if need be, until another ack of this socket may be queued."""
        while self.acks_in_flight >= MAX_ACKS_IN_FLIGHT:
            self._ack_room = self._ack_room or asyncio.Event()
            await self._ack_room.wait()

    def acks_done(self, count: int) -> None:
        self.acks_in_flight -= count
        if self._ack_room is not None and self.acks_in_flight < MAX_ACKS_IN_FLIGHT:
            self._ack_room.set()
            self._ack_room = None

    def saw_newer(self, epoch: int) -> bool:
        """Note another socket's epoch; True when this socket is now the older one."""
        self.newest_epoch_seen = max(self.newest_epoch_seen, epoch)
        return 0 < self.epoch < self.newest_epoch_seen

    def deliver(self, frame: bytes) -> bytes:
        """A dispatcher's delivery: push the command frame (or, with none, answer that this socket
        is here); the reply."""
        if not frame:
            return codec.dumps({"ok": True, "last_seen": codec.iso(self.last_seen)})
        if self.send("command", frame):
            self.metrics.deliveries("pushed").inc()
            return OK
        self.metrics.deliveries("closed").inc()
        return codec.dumps({"ok": False, "error": error_body(NotFound("socket closed"))})
