"""Black-box helpers: gateway replicas as real processes, our own JWTs, browsers over the wire.

Nothing here imports the gateway: the contract tests see it only as a process configured by
environment variables, a WebSocket endpoint and NATS subjects (DESIGN sections 2 and 5).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from devtools.natsserver import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "contract-miniapp-secret-" + "0123456789abcdef" * 3  # long enough for HS512 too
AUDIENCE = "contract-audience"
# The cap is configurable (DESIGN section 5, "Limits (configurable)"); a small one keeps the test short.
CAP = 5
# Every environment variable a replica may see: nothing leaks in from the developer's shell.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def new_session() -> str:
    return f"cs-{uuid.uuid4().hex[:16]}"


def new_user() -> str:
    return str(uuid.uuid4())


def make_token(
    sub: str | None,
    *,
    exp_in: float = 3600,
    aud: str | None = AUDIENCE,
    secret: str = SECRET,
    alg: str = "HS256",
    omit: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A Supabase-shaped access token, minted with pyjwt (never with the project's helper)."""
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + int(exp_in), "role": "authenticated", **claims}
    if sub is not None:
        body["sub"] = sub
    if aud is not None:
        body["aud"] = aud
    for name in omit:
        body.pop(name, None)
    return jwt.encode(body, secret, algorithm=alg)


def unsigned_token(sub: str, exp_in: float = 3600) -> str:
    """An `alg: none` token: header and claims with an empty signature."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    claims = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time() + exp_in), "role": "authenticated"}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll a cheap synchronous condition, bounded by `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


@dataclass
class Replica:
    """`python -m services.miniapp_gateway` as a real process on its own port."""

    nats_url: str
    log_path: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session_id: str, token: str | None) -> str:
        query = "" if token is None else f"?token={token}"
        return f"ws://127.0.0.1:{self.port}/ws/miniapp/{session_id}{query}"

    def environment(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in INHERITED if name in os.environ}
        env.update(
            {
                "NATS_URL": self.nats_url,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "SUPABASE_JWT_SECRET": SECRET,
                "JWT_AUDIENCE": AUDIENCE,
                "MAX_CONNECTIONS_PER_SESSION": str(CAP),
                "LOG_FORMAT": "text",
                "LOG_LEVEL": "WARNING",
                "SHUTDOWN_GRACE_S": "10",
            }
        )
        env.update(self.env_extra)
        return env

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.miniapp_gateway"],
                cwd=ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        """Until `/readyz` answers 200; fail at once if the process exits."""
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"replica exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    async with http.get(f"{self.base_url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            while (code := self.proc.poll() if self.proc else 0) is None:
                await asyncio.sleep(0.05)
        return code

    def stop(self) -> None:
        """SIGKILL if still running; always bounded."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@dataclass
class Browser:
    """One WebSocket client: every frame it read, kept in order; its close code once closed."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    async def send(self, type_: str, data: Any = None) -> None:
        await self.ws.send_str(orjson.dumps({"type": type_, "data": {} if data is None else data}).decode())

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None once the socket closed (then `close_code` is set)."""
        if self.close_code is not None:
            return None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            frame: dict[str, Any] = orjson.loads(msg.data)
            assert set(frame) == {"type", "data"}, frame
            self.frames.append(frame)
            return frame
        if msg.type is aiohttp.WSMsgType.CLOSE:
            self.close_code = int(msg.data)
            self.close_reason = msg.extra or ""
        else:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006
        return None

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Read until a frame of `type_` whose data holds the `match` items."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if frame is None:
                    raise AssertionError(f"closed {self.close_code} {self.close_reason!r} awaiting {type_}")
                data: dict[str, Any] = frame["data"]
                if frame["type"] == type_ and all(data.get(k) == v for k, v in match.items()):
                    return data

    async def collect(self, type_: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next `count` frames of `type_`, in arrival order."""
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                found.append(await self.expect(type_, timeout))
        return found

    async def quiet(self, seconds: float, *types: str) -> list[dict[str, Any]]:
        """Frames of `types` that arrive within `seconds` (to show something was *not* sent)."""
        seen: list[dict[str, Any]] = []
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
        async with asyncio.timeout(timeout):
            while await self.next(timeout) is not None:
                pass
        assert self.close_code is not None
        return self.close_code, self.close_reason

    async def close(self) -> None:
        await self.ws.close()


async def open_socket(
    http: aiohttp.ClientSession, replica: Replica, session_id: str, token: str | None, compress: int = 0
) -> Browser:
    """Open a socket (`compress=15`: permessage-deflate, as browsers do); `connected` is left unread."""
    ws = await http.ws_connect(
        replica.ws_url(session_id, token),
        autoping=True,
        compress=compress,
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
    )
    return Browser(ws)


async def join(
    http: aiohttp.ClientSession, replica: Replica, session_id: str, user_id: str | None = None
) -> tuple[Browser, dict[str, Any]]:
    """Open a socket with a fresh valid token and read its `connected` frame."""
    browser = await open_socket(http, replica, session_id, make_token(user_id or new_user()))
    connected = await browser.expect("connected")
    return browser, connected


@dataclass
class Listener:
    """Everything published on one NATS subject, parsed, in arrival order."""

    sub: Subscription
    queue: asyncio.Queue[dict[str, Any]]

    async def next(self, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                body = await self.queue.get()
                if all(body.get(k) == v for k, v in match.items()):
                    return body

    async def stop(self) -> None:
        await self.sub.unsubscribe()


async def listen(nc: NATS, subject: str) -> Listener:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(orjson.loads(msg.data))

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return Listener(sub, queue)


async def call(nc: NATS, subject: str, body: Any, timeout: float = 5.0) -> dict[str, Any]:
    """One internal API request; the raw reply body (`ok` included)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    msg = await nc.request(subject, raw, timeout=timeout)
    reply: dict[str, Any] = orjson.loads(msg.data)
    return reply


def sigkill(replica: Replica) -> None:
    replica.signal(signal.SIGKILL)
