"""One browser socket: its identity, its rate limit and its token expiry (writing: `ServerSocket`)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from shared.protocol import codec
from shared.protocol.errors import CloseCode, IkiroError
from shared.runtime.ratelimit import TokenBucket, WindowCounter
from shared.runtime.socket import Outbox, ServerSocket

from .config import MiniAppSettings
from .metrics import MiniAppGatewayMetrics

TYPING = "typing"


class Connection(ServerSocket):
    __slots__ = ("_expiry", "abuse", "connection_id", "frame_rate", "replica_id", "session_id", "user_id")
    metrics: MiniAppGatewayMetrics

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        session_id: str,
        user_id: str,
        connection_id: str,
        settings: MiniAppSettings,
        metrics: MiniAppGatewayMetrics,
    ) -> None:
        outbox = Outbox(
            settings.outbox_max_frames, settings.outbox_max_bytes, TYPING, settings.outbox_typing_drop_frames
        )
        super().__init__(ws, transport, outbox, metrics, settings.write_timeout_s)
        self.session_id = session_id
        self.user_id = user_id
        self.connection_id = connection_id
        self.replica_id = ""  # the replica id its presence entry was written under
        self.frame_rate = TokenBucket(settings.rate_per_s, settings.rate_burst)
        self.abuse = WindowCounter(settings.rate_abuse_limit, settings.rate_abuse_window_s)
        self._expiry: asyncio.TimerHandle | None = None

    def send_error(self, err: IkiroError) -> None:
        self.send("error", codec.error_frame(err))

    def expire_at(self, exp: float, leeway_s: float) -> None:
        """Close with 4001 once the token's `exp` (unix seconds) plus the leeway has passed."""
        self.stop_timers()
        loop = asyncio.get_running_loop()
        delay = max(0.0, exp + leeway_s - time.time())
        self._expiry = loop.call_at(
            loop.time() + delay, self.close_soon, CloseCode.UNAUTHORIZED, "token expired"
        )

    def admit_frame(self) -> bool:
        """Take a token for one incoming frame; repeated abuse asks for a 1008 close."""
        if self.frame_rate.take():
            return True
        if self.abuse.record():
            self.close_soon(CloseCode.POLICY_VIOLATION, "sustained rate abuse")
        return False

    def stop_timers(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
