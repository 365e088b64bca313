"""One server-side WebSocket: the reader, one writer task with a bounded outbox, and one close.

The socket's own task reads; every frame out goes through the outbox to the single writer task,
so no two places ever write to the socket (aiohttp shares one drain waiter per connection, and
concurrent writers cancelling each other's waits is how frames and closes used to get lost). The
writer runs only while there is something to write: an idle socket has no task of its own, which
is most of what a gateway holding ten thousand of them spends its memory on. Anything may ask for
the socket to close (`close_soon`: slow consumer, expired token, replaced, drain); the writer
performs the close, after which the reader sees the socket end. A peer too slow to read is cut off
(1013): the gateway never buffers without bound for one client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from shared.protocol.errors import CloseCode
from shared.runtime.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# A close waits this long for the peer's close frame.
CLOSE_TIMEOUT_S = 2.0
# A peer that has not read its backlog (and our close frame behind it) this long after the close
# has its connection cut, or its buffers would be held until TCP gives up.
ABORT_AFTER_S = 10.0
# A frame this small written into an empty send buffer leaves it under any high-water mark (and under
# aiohttp's limit for compressing in the loop): the write cannot wait for the peer.
UNSTALLABLE_BYTES = 4096


class SlowConsumer(Exception):
    """The socket's queue is over its limits; the connection must be closed with 1013."""


class Outbox:
    """A socket's queue of outgoing frames, bounded in frames and bytes.

    Frames of the `droppable` kind (MiniApp `typing`: stale the moment they are late) are the first
    to go when the reader falls behind.
    """

    __slots__ = ("_bytes", "_frames", "closed", "drop_after", "droppable", "max_bytes", "max_frames")

    def __init__(self, max_frames: int, max_bytes: int, droppable: str = "", drop_after: int = 0) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.droppable = droppable
        self.drop_after = drop_after
        self._frames: deque[tuple[str, bytes]] = deque()
        self._bytes = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, kind: str, data: bytes) -> bool:
        """Queue a frame; False when it was dropped (droppable behind a backlog, or closed).

        Raises `SlowConsumer` when the queue would stay over its limits even without droppables.
        """
        if self.closed or (kind == self.droppable and len(self._frames) >= self.drop_after):
            return False
        self._frames.append((kind, data))
        self._bytes += len(data)
        if self._over():
            self._drop_droppable()
            if self._over():
                raise SlowConsumer(f"{len(self._frames)} frames, {self._bytes} bytes waiting")
        return True

    def pop(self) -> tuple[str, bytes] | None:
        """The next frame, or None when there is none."""
        if not self._frames:
            return None
        kind, data = self._frames.popleft()
        self._bytes -= len(data)
        return kind, data

    def close(self, discard: bool = False) -> None:
        """Take nothing more; what is queued is still sent, unless `discard`."""
        self.closed = True
        if discard:
            self._frames.clear()
            self._bytes = 0

    def _over(self) -> bool:
        return len(self._frames) > self.max_frames or self._bytes > self.max_bytes

    def _drop_droppable(self) -> None:
        if not self.droppable:
            return
        kept = deque(item for item in self._frames if item[0] != self.droppable)
        self._bytes = sum(len(data) for _, data in kept)
        self._frames = kept


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: int
    reason: str


class ServerSocket:
    """Per-socket state is kept small on purpose: tens of thousands live in one process."""

    # Whether frames that arrive after this side's close frame (before the peer's) are still read:
    # an edge agent's acks in flight when its gateway drains are worth keeping. Needs a socket made
    # with autoclose=False, since the close handshake is then done here.
    READ_THROUGH_CLOSE = False

    __slots__ = (
        "_close_sent",
        "_idle_s",
        "_idle_timer",
        "_idled",
        "_interrupted",
        "_last_read",
        "_peer_closed",
        "_peer_code",
        "_reader",
        "_receiving",
        "_sending",
        "_writer",
        "close_request",
        "metrics",
        "outbox",
        "transport",
        "write_timeout_s",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        outbox: Outbox,
        metrics: GatewayMetrics,
        write_timeout_s: float,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.outbox = outbox
        self.metrics = metrics
        self.write_timeout_s = write_timeout_s
        self.close_request: CloseRequest | None = None
        self._writer: asyncio.Task[None] | None = None
        self._sending = False
        self._interrupted = False
        self._close_sent = False
        self._peer_closed = False
        self._peer_code: int | None = None  # the code of a close the peer began
        # The idle timeout: one timer per socket that looks at when a frame last came, instead of
        # a timeout around every read (aiohttp's own note: that can be half the cost of a read).
        self._idle_s = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idled = False
        self._last_read = 0.0  # when the reader began waiting for the next frame
        self._reader: asyncio.Task[Any] | None = None
        self._receiving = False  # the reader waits for a frame (not in its handler)

    @property
    def closing(self) -> bool:
        return self.close_request is not None or self.ws.closed

    @property
    def close_code(self) -> int:
        """The code of whichever side closed first (1006 when neither sent one)."""
        if self._peer_code is not None:
            return self._peer_code
        if self.close_request is not None:
            return self.close_request.code
        return self.ws.close_code or CloseCode.ABNORMAL

    def send(self, kind: str, frame: bytes) -> bool:
        """Queue one frame for the writer; False when it will not be sent. A socket too far behind
        is closed with 1013."""
        if self.close_request is not None:
            return False
        try:
            queued = self.outbox.put(kind, frame)
        except SlowConsumer as err:
            log.info("closing a slow consumer: %s", err)
            self.metrics.slow_consumer_closes.inc()
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "too slow to read")
            return False
        if not queued:
            self.metrics.frames_dropped.labels(type=kind).inc()
        elif self._writer is None and self.ws.prepared:  # before the upgrade, `run` starts it
            self._writer = asyncio.create_task(self._write())
        return queued

    def close_soon(self, code: int, reason: str) -> None:
        """Ask for the socket to be closed with `code`; the first request wins."""
        if self.close_request is not None:
            return
        self.close_request = CloseRequest(int(code), reason)
        if self._idle_timer is not None:  # a reader waiting for a frame waits for the peer's close now
            self._idle_timer.cancel()
            self._idle_timer = asyncio.get_running_loop().call_later(self._close_wait_s(), self._look_idle)
        # Frames queued before the close still go out first, but not to a peer that does not read.
        slow = code == CloseCode.TRY_AGAIN_LATER
        self.outbox.close(discard=slow)
        if self._writer is None:
            if self.ws.prepared:  # before the upgrade, `run` starts it
                self._writer = asyncio.create_task(self._write())
        elif slow and self._sending:
            self._interrupted = True
            self._writer.cancel()

    async def run(self, read: Callable[[], Awaitable[None]]) -> None:
        """Read with `read` in this task until the socket ends; return once it is closed."""
        if self._writer is None and (len(self.outbox) or self.close_request is not None):
            self._writer = asyncio.create_task(self._write())  # queued before the upgrade
        try:
            await read()
        finally:
            if self.ws.closed:
                self.outbox.close(discard=True)  # the peer closed: nothing left to send
            else:
                self.close_soon(CloseCode.NORMAL, "")
            writer = self._writer
            if writer is not None:
                done, _ = await asyncio.wait({writer}, timeout=CLOSE_TIMEOUT_S + 1.0)
                if not done:
                    writer.cancel()
                    self._abort()
            if self.READ_THROUGH_CLOSE and not (self._close_sent and self._peer_closed):
                self._abort()  # no close frame came back in time (or none could be sent)

    async def read_frames(
        self,
        on_frame: Callable[[bytes], Awaitable[None]],
        max_frame_bytes: int,
        idle_timeout_s: float | None = None,
    ) -> None:
        """Hand each data frame to `on_frame` until the socket ends or a close is asked for.

        Over `max_frame_bytes` closes with 1009; nothing received for `idle_timeout_s`, with 1001.
        """
        ws = self.ws
        loop = asyncio.get_running_loop()
        if idle_timeout_s is not None:
            self._idle_s = idle_timeout_s
            self._reader = asyncio.current_task()
            self._idle_timer = loop.call_later(idle_timeout_s, self._look_idle)
        try:
            await self._read_frames(ws, loop, on_frame, max_frame_bytes)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = self._reader = None

    async def _read_frames(
        self,
        ws: web.WebSocketResponse,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytes], Awaitable[None]],
        max_frame_bytes: int,
    ) -> None:
        while self._reading():
            try:
                if self.close_request is not None:
                    msg = await ws.receive(timeout=self._close_wait_s())
                else:
                    self._last_read = loop.time()  # idle: waiting here since
                    self._receiving = True  # the idle timer may interrupt this wait, and only this
                    try:
                        msg = await ws.receive()
                    finally:
                        self._receiving = False
            except TimeoutError:
                return
            except asyncio.CancelledError:
                if not self._idled or self._reader is None or self._reader.uncancel() > 0:
                    raise
                self.close_soon(CloseCode.GOING_AWAY, "idle timeout")  # unless closing already
                return
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
                if len(raw) > max_frame_bytes:
                    self.close_soon(CloseCode.MESSAGE_TOO_BIG, "frame too big")
                    return
                await on_frame(raw)
            elif msg.type is WSMsgType.CLOSE and self.READ_THROUGH_CLOSE:
                self._peer_closed = True
                if self.close_request is None:  # the peer began: answer, and remember its code
                    self._peer_code = msg.data if isinstance(msg.data, int) else CloseCode.NORMAL
                    self.close_soon(CloseCode.NORMAL, "")
                self._finish_close()
                return
            else:  # CLOSE, CLOSING, CLOSED, or ERROR (aiohttp has closed the socket)
                return

    def _look_idle(self) -> None:
        """The idle timer: look again when it could next be due, or stop a reader nothing reached."""
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_read
        # Once a close is asked for, the peer has as long as a close handshake takes to answer it.
        due = self._idle_s if self.close_request is None else self._close_wait_s()
        if quiet < due or not self._receiving:
            self._idle_timer = loop.call_later(max(due - quiet, 1.0), self._look_idle)
            return
        self._idle_timer = None
        if self._reader is not None:
            self._idled = True
            self._reader.cancel()

    def _close_wait_s(self) -> float:
        return CLOSE_TIMEOUT_S + self.write_timeout_s

    def _reading(self) -> bool:
        """Until a close is asked for; with READ_THROUGH_CLOSE, until the peer's close frame, unless
        the peer is not to be listened to any more (too slow, or its frame too big)."""
        request = self.close_request
        if request is None:
            return True
        return self.READ_THROUGH_CLOSE and request.code not in (
            CloseCode.TRY_AGAIN_LATER,
            CloseCode.MESSAGE_TOO_BIG,
        )

    def _finish_close(self) -> None:
        """Both close frames have passed: end the connection (the transport flushes first)."""
        if self._close_sent and self._peer_closed and self.transport is not None:
            self.transport.close()

    async def _write(self) -> None:
        """Write what is queued, then close if a close was asked for; exit when there is nothing."""
        try:
            while (item := self.outbox.pop()) is not None:
                kind, frame = item
                self._sending = True
                try:
                    if self._may_wait(frame):
                        async with asyncio.timeout(self.write_timeout_s):
                            await self.ws.send_frame(frame, WSMsgType.TEXT)
                    else:  # a timeout would cost more than the write
                        await self.ws.send_frame(frame, WSMsgType.TEXT)
                finally:
                    self._sending = False
                self.metrics.frames_out(kind).inc()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._interrupted or task is None:
                raise
            task.uncancel()
        except TimeoutError:
            self.metrics.slow_consumer_closes.inc()
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "too slow to read")
        except (ConnectionError, RuntimeError):
            pass  # the peer is gone; the close below only tidies up
        if self.close_request is None and not self.outbox.closed:
            self._writer = None  # idle again (nothing was awaited since the queue was found empty)
            return
        await self._close()

    def _may_wait(self, frame: bytes) -> bool:
        """Whether writing `frame` could wait on the peer. Not a small frame into an empty send
        buffer: it goes to the kernel at once, and aiohttp has nothing to wait for."""
        transport = self.transport
        return len(frame) > UNSTALLABLE_BYTES or transport is None or transport.get_write_buffer_size() > 0

    async def _close(self) -> None:
        request = self.close_request or CloseRequest(CloseCode.NORMAL, "")
        if self.READ_THROUGH_CLOSE and self._reading():
            await self._send_close_frame(request)
            return
        if not self.ws.closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.ws.close(code=request.code, message=request.reason.encode()[:120], drain=False)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                # aiohttp shares one drain waiter per connection: the send we interrupted cancelled
                # it, and this close sees that. Only a cancellation of this task is real.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except (ConnectionError, RuntimeError):
                pass
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            # The close frame waits behind data the peer has not read: give it a while, then cut.
            asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)

    async def _send_close_frame(self, request: CloseRequest) -> None:
        """The close frame alone: the reader goes on until the peer's, then ends the connection."""
        payload = request.code.to_bytes(2, "big") + request.reason.encode()[:120]
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.send_frame(payload, WSMsgType.CLOSE)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._abort()
            return
        self._close_sent = True
        self._finish_close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
