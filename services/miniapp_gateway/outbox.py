"""One socket's bounded queue of outgoing frames (DESIGN section 5, slow consumers).

A browser that reads too slowly first loses `typing` presence (stale the moment it is late), and
is cut off once more than `max_frames` frames or `max_bytes` bytes wait: the gateway never
buffers without bound for one client.
"""

from __future__ import annotations

import asyncio
from collections import deque

TYPING = "typing"


class SlowConsumer(Exception):
    """The socket's queue is over its limits; the connection must be closed with 1013."""


class Outbox:
    def __init__(self, max_frames: int, max_bytes: int, typing_drop_frames: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.typing_drop_frames = typing_drop_frames
        self._frames: deque[tuple[str, bytes]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, kind: str, data: bytes) -> bool:
        """Queue a frame; False when it was dropped (typing behind a backlog).

        Raises `SlowConsumer` when the queue would stay over its limits even without typing.
        """
        if kind == TYPING and len(self._frames) >= self.typing_drop_frames:
            return False
        self._frames.append((kind, data))
        self._bytes += len(data)
        if self._over():
            self._drop_typing()
            if self._over():
                raise SlowConsumer(f"{len(self._frames)} frames, {self._bytes} bytes waiting")
        self._ready.set()
        return True

    async def get(self) -> tuple[str, bytes]:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        kind, data = self._frames.popleft()
        self._bytes -= len(data)
        return kind, data

    def _over(self) -> bool:
        return len(self._frames) > self.max_frames or self._bytes > self.max_bytes

    def _drop_typing(self) -> None:
        kept = deque(item for item in self._frames if item[0] != TYPING)
        self._bytes = sum(len(data) for _, data in kept)
        self._frames = kept
