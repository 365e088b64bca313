"""One WebSocket client for both protocols: `{"type", "data"}` frames, every frame kept, the close seen."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

JsonObj = dict[str, Any]
CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


@dataclass
class Socket:
    ws: aiohttp.ClientWebSocketResponse
    frames: list[JsonObj] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    async def send(self, type_: str, data: Any = None) -> None:
        await self.ws.send_str(json.dumps({"type": type_, "data": {} if data is None else data}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def next(self, timeout: float = 5.0) -> JsonObj | None:
        """The next frame (a text frame holding exactly `type` and `data`), or None once closed."""
        if self.close_code is not None:
            return None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type in CLOSED:
            if msg.type is aiohttp.WSMsgType.CLOSE:
                self.close_code, self.close_reason = int(msg.data), msg.extra or ""
            else:
                self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006
            return None
        assert msg.type is aiohttp.WSMsgType.TEXT, f"not a text frame: {msg.type} {msg.data!r}"
        frame = json.loads(msg.data)
        assert isinstance(frame, dict) and set(frame) == {"type", "data"}, frame
        self.frames.append(frame)
        return frame

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> JsonObj:
        """The data of the next frame of `type_` whose data holds the `match` items (others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(max(deadline - time.monotonic(), 0.001))
            if frame is None:
                raise AssertionError(f"closed {self.close_code} {self.close_reason!r} awaiting {type_}")
            data: JsonObj = frame["data"]
            if frame["type"] == type_ and all(data.get(k) == v for k, v in match.items()):
                return data

    async def collect(self, type_: str, count: int, timeout: float = 5.0) -> list[JsonObj]:
        """The next `count` frames of `type_`, in arrival order."""
        deadline = time.monotonic() + timeout
        return [await self.expect(type_, max(deadline - time.monotonic(), 0.001)) for _ in range(count)]

    async def quiet(self, seconds: float, *types: str) -> list[JsonObj]:
        """Frames of `types` that arrive within `seconds` (to show something was *not* sent)."""
        seen: list[JsonObj] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self.next(left)
            except TimeoutError:
                break
            if frame is None:
                break
            if frame["type"] in types:
                seen.append(frame)
        return seen

    async def expect_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read until the server closes (frames before it are kept); the close code and reason."""
        deadline = time.monotonic() + timeout
        while await self.next(max(deadline - time.monotonic(), 0.001)) is not None:
            pass
        assert self.close_code is not None
        return self.close_code, self.close_reason

    async def ping_pong(self) -> JsonObj:
        await self.send("ping")
        return await self.expect("pong")

    async def close(self) -> None:
        await self.ws.close()


async def connect(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, compress: int = 0
) -> Socket:
    """Open a socket (`compress=15`: permessage-deflate, as browsers do); nothing is read yet."""
    ws = await http.ws_connect(
        url, headers=headers, compress=compress, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5)
    )
    return Socket(ws)


def small_rcvbuf(addr_info: Any) -> socket.socket:
    """A socket factory with a 32 KiB receive buffer: a client that stops reading backs up fast."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return sock


def frame_of_size(type_: str, size: int) -> str:
    """A JSON frame of exactly `size` bytes: `{"type": type_, "data": {"patch": {"pad": "xxx"}}}`."""
    empty = json.dumps({"type": type_, "data": {"patch": {"pad": ""}}})
    text = json.dumps({"type": type_, "data": {"patch": {"pad": "x" * (size - len(empty))}}})
    assert len(text) == size
    return text
