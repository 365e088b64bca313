"""One browser socket: its identity, its bounded writer, its rate limit and its token expiry.

A socket has exactly one reader (the request handler) and one writer task. Anything may ask for
the socket to close (`close_soon`: slow consumer, expired token, drain, fenced replica); the
handler does the closing, so the close code is chosen in one place and the writer is never left
blocked on a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web

from services.miniapp_gateway.outbox import Outbox, SlowConsumer
from services.miniapp_gateway.ratelimit import AbuseCounter, TokenBucket
from shared.errors import IkiroError
from shared.metrics import MiniAppGatewayMetrics
from shared.miniapp_protocol import error_frame

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: int
    reason: str


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        session_id: str,
        user_id: str,
        connection_id: str,
        outbox: Outbox,
        bucket: TokenBucket,
        abuse: AbuseCounter,
        metrics: MiniAppGatewayMetrics,
    ) -> None:
        self.ws = ws
        self.session_id = session_id
        self.user_id = user_id
        self.connection_id = connection_id
        self.outbox = outbox
        self.bucket = bucket
        self.abuse = abuse
        self.metrics = metrics
        self.close_request: CloseRequest | None = None
        self.closing = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, kind: str, frame: bytes) -> None:
        """Queue one frame for the writer; a socket too far behind is closed with 1013."""
        if self.close_request is not None:
            return
        try:
            if not self.outbox.put(kind, frame):
                self.metrics.frames_dropped.labels(type=kind).inc()
        except SlowConsumer as err:
            log.info("closing a slow consumer: %s", err, extra={"connection_id": self.connection_id})
            self.metrics.slow_consumer_closes.inc()
            self.close_soon(WSCloseCode.TRY_AGAIN_LATER, "too slow to read")

    def send_error(self, err: IkiroError) -> None:
        self.send("error", error_frame(err))

    def close_soon(self, code: int, reason: str) -> None:
        """Ask for the socket to be closed with `code`; the first request wins."""
        if self.close_request is None:
            self.close_request = CloseRequest(code, reason)
            self.closing.set()

    def expire_at(self, exp: float, leeway_s: float) -> None:
        """Close with 4001 once the token's `exp` (unix seconds) plus the leeway has passed."""
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, exp + leeway_s - time.time())
        self._expiry = loop.call_at(loop.time() + delay, self.close_soon, 4001, "token expired")

    def admit_frame(self) -> bool:
        """Take a token for one incoming frame; repeated abuse asks for a 1008 close."""
        if self.bucket.take():
            return True
        if self.abuse.record():
            self.close_soon(WSCloseCode.POLICY_VIOLATION, "sustained rate abuse")
        return False

    async def write_loop(self) -> None:
        while True:
            kind, frame = await self.outbox.get()
            await self.ws.send_frame(frame, WSMsgType.TEXT)
            self.metrics.frames_out.labels(type=kind).inc()

    async def close(self, code: int, reason: str) -> None:
        """Close the socket, bounded: a client that does not read gets its TCP connection cut."""
        if self._expiry is not None:
            self._expiry.cancel()
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode()[:120], drain=False)
        except TimeoutError:
            pass

    def stop_timers(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
