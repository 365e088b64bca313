"""Helpers for MiniApp tests: in-process gateways on free ports and WebSocket clients."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nats
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS

from services.miniapp_gateway.app import create_app
from services.miniapp_gateway.config import MiniAppSettings
from services.miniapp_gateway.gateway import GATEWAY
from shared.supabase import mint_dev_token
from tests.support import free_port

SECRET = "test-supabase-jwt-secret-0123456789abcdef"
AUDIENCE = "authenticated"
FAST = {"heartbeat_interval_s": 0.3, "presence_ttl_s": 2}


def settings_for(nats_url: str, **overrides: Any) -> MiniAppSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "host": "127.0.0.1",
        "port": free_port(),
        "supabase_jwt_secret": SECRET,
        "jwt_audience": AUDIENCE,
        **FAST,
        **overrides,
    }
    return MiniAppSettings(**values)


def token(user_id: str, ttl_s: int = 3600, **kwargs: Any) -> str:
    return mint_dev_token(user_id, SECRET, AUDIENCE, ttl_s, **kwargs)


def new_session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def new_user() -> str:
    return str(uuid.uuid4())


@dataclass
class Gateway:
    """A gateway app served on a real port, with its own NATS connection."""

    settings: MiniAppSettings
    app: web.Application
    runner: web.AppRunner
    nc: NATS

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def ws_url(self, session_id: str, token: str | None) -> str:
        query = f"?token={token}" if token is not None else ""
        return f"ws://127.0.0.1:{self.settings.port}/ws/miniapp/{session_id}{query}"

    @property
    def replica_id(self) -> str:
        return self.app[GATEWAY].hub.presence.replica_id

    async def stop(self) -> None:
        await self.app[GATEWAY].drain()
        await self.runner.cleanup()
        await self.nc.close()


async def start_gateway(nats_url: str, **overrides: Any) -> Gateway:
    settings = settings_for(nats_url, **overrides)
    nc = await nats.connect(nats_url)
    app = create_app(settings, nc)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    return Gateway(settings, app, runner, nc)


@dataclass
class Client:
    """A browser: one socket, every frame it received kept in order."""

    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    async def send(self, type_: str, data: Any = None) -> None:
        await self.ws.send_bytes(orjson.dumps({"type": type_, "data": data if data is not None else {}}))

    async def send_raw(self, raw: str) -> None:
        await self.ws.send_str(raw)

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None once the socket is closed (code in `close_code`)."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            frame: dict[str, Any] = orjson.loads(msg.data)
            self.frames.append(frame)
            return frame
        if msg.type is aiohttp.WSMsgType.CLOSE:
            self.close_code = int(msg.data)
            self.close_reason = msg.extra or ""
        elif self.close_code is None:
            self.close_code = self.ws.close_code
        return None

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Read until a frame of `type_` whose data has the `match` items; fail on close or timeout."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next(timeout)
                if frame is None:
                    raise AssertionError(
                        f"closed ({self.close_code} {self.close_reason}) waiting for {type_}"
                    )
                data = frame.get("data") or {}
                if frame["type"] == type_ and all(data.get(k) == v for k, v in match.items()):
                    return data

    async def expect_close(self, timeout: float = 10.0) -> int:
        async with asyncio.timeout(timeout):
            while await self.next(timeout) is not None:
                pass
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def connect(
    gateway: Gateway,
    session_id: str,
    user_id: str | None = None,
    tok: str | None = None,
    anonymous: bool = False,
) -> Client:
    """Open a socket; the `connected` frame (or the close) is left for the caller to read."""
    http = aiohttp.ClientSession()
    if tok is None and not anonymous:
        tok = token(user_id or new_user())
    ws = await http.ws_connect(gateway.ws_url(session_id, tok), autoping=True)
    return Client(ws, http)


async def join(
    gateway: Gateway, session_id: str, user_id: str | None = None
) -> tuple[Client, dict[str, Any]]:
    """Open a socket and read its `connected` frame."""
    client = await connect(gateway, session_id, user_id)
    connected = await client.expect("connected")
    return client, connected
