"""One WebSocket client for both protocols: `{"type", "data"}` frames, every frame kept, the close seen."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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

    async def expect_each(self, *types: str, timeout: float = 5.0) -> dict[str, JsonObj]:
        """The data of the next frame of each of `types`, in whatever order they come: frames of
        one kind keep their order, frames of different kinds need not."""
        deadline = time.monotonic() + timeout
        found: dict[str, JsonObj] = {}
        while len(found) < len(types):
            frame = await self.next(max(deadline - time.monotonic(), 0.001))
            if frame is None:
                raise AssertionError(f"closed {self.close_code} {self.close_reason!r} awaiting {types}")
            if frame["type"] in types and frame["type"] not in found:
                found[frame["type"]] = frame["data"]
        return found

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


def client_frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """One masked client frame, by hand (aiohttp sends only whole messages)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big") if size else b""
    return bytes([(0x80 if fin else 0) | opcode]) + length + mask + masked


async def fragmented_message_close(url: str, headers: dict[str, str], fragments: list[int]) -> int:
    """Upgrade by hand, send one text message in fragments of these sizes, return the close code."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = [
            f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        status = await asyncio.wait_for(reader.readline(), 5)
        assert b" 101 " in status, status
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
            pass
        for index, size in enumerate(fragments):
            opcode = 0x1 if index == 0 else 0x0  # text, then continuations
            writer.write(client_frame(opcode, b"x" * size, fin=index == len(fragments) - 1))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(10):
            while True:  # server frames (a `connected` first, on a MiniApp socket) until the close
                head = await reader.readexactly(2)
                size = head[1] & 0x7F
                if size == 126:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                elif size == 127:
                    size = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(size)
                if head[0] & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big")
    finally:
        writer.close()
