"""One browser socket: its identity, its rate limit and its token expiry (writing: `ServerSocket`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.broker.connection import NATS_ERRORS
from shared.protocol import codec
from shared.protocol.errors import CloseCode, ErrorCode, IkiroError, Unavailable
from shared.runtime.ratelimit import TokenBucket, WindowCounter
from shared.runtime.socket import Outbox, ServerSocket

from .config import MiniAppSettings
from .metrics import MiniAppGatewayMetrics

TYPING = "typing"
# Frames of one socket waiting behind a state update the store has not answered yet (an election
# takes about 5 s): at the frame rate limit, 10 s of frames fit, and no more is held.
MAX_WAITING_FRAMES = 256


class Connection(ServerSocket):
    __slots__ = (
        "_expiry",
        "_tail",
        "_tail_is_update",
        "_waiting",
        "abuse",
        "connection_id",
        "frame_rate",
        "replica_id",
        "session_id",
        "user_id",
    )
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
        # The last ordered frame not yet done (a state update's outcome, or a frame chained after
        # one), so later frames keep their order without holding the reader: pings are answered
        # while an update waits for the store.
        self._tail: asyncio.Future[Any] | None = None
        self._tail_is_update = False
        self._waiting = 0

    def in_order_update(self, submit: Callable[[], asyncio.Future[Any]]) -> None:
        """Submit a state update after this socket's earlier ordered frames. The store keeps a
        session's updates in order, so behind another update it is submitted at once."""
        if self._pending_tail() is None or self._tail_is_update:
            self._tail, self._tail_is_update = submit(), True
            return

        async def submitted() -> None:
            await asyncio.wait([submit()])

        self._chain(submitted)
        self._tail_is_update = False

    async def in_order(self, step: Callable[[], Awaitable[None]], client_msg_id: str | None = None) -> None:
        """Run `step` (an action, a typing notice) after this socket's earlier ordered frames: at
        once when none waits, else chained behind them (its error then sent from there)."""
        if self._pending_tail() is None:
            await step()
            return
        self._chain(step, client_msg_id)
        self._tail_is_update = False

    def _pending_tail(self) -> asyncio.Future[Any] | None:
        tail = self._tail
        return tail if tail is not None and not tail.done() else None

    def _chain(self, step: Callable[[], Awaitable[None]], client_msg_id: str | None = None) -> None:
        if self._waiting >= MAX_WAITING_FRAMES:
            raise IkiroError("too many frames waiting for the state store, slow down", ErrorCode.RATE_LIMITED)
        previous = self._tail

        async def after_previous() -> None:
            try:
                if previous is not None:
                    await asyncio.wait([previous])
                await step()
            except (IkiroError, *NATS_ERRORS) as err:
                refused = err if isinstance(err, IkiroError) else Unavailable("unavailable, try again")
                self.send_error(refused, client_msg_id)
            finally:
                self._waiting -= 1

        self._waiting += 1
        self._tail = asyncio.ensure_future(after_previous())

    def send_error(self, err: IkiroError, client_msg_id: str | None = None) -> None:
        """An `error` frame; one about a frame that had a `client_msg_id` names it (a copy of `err`
        does: one error may refuse several senders' updates)."""
        if client_msg_id is not None:
            err = IkiroError(err.message, err.code, **{**err.extra, "client_msg_id": client_msg_id})
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
