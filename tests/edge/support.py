"""Edge path test harness: real dispatcher and gateway apps in-process, real WebSocket agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.aio.client import Client as NATS

from services.command_dispatcher.app import create_app as create_dispatcher
from services.command_dispatcher.config import DispatcherSettings
from services.edge_gateway.app import create_app as create_gateway
from services.edge_gateway.config import EdgeGatewaySettings
from shared.auth import generate_edge_token
from shared.client import CommandClient

SECRET = "test-edge-secret"
FAST_TIMERS = {"ack_timeout_s": 0.5, "max_ack_timeout_s": 2.0, "offline_recheck_s": 1.0}
WAIT_S = 10.0


class RunningApp:
    """A service app served on a free port with its own NATS connection, as a replica would be."""

    def __init__(self, app: web.Application, nc: NATS, server: TestServer) -> None:
        self.app = app
        self.nc = nc
        self.server = server

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/edge/ws"

    async def stop(self) -> None:
        await self.server.close()
        if not self.nc.is_closed:
            await self.nc.close()


async def start_dispatcher(nats_url: str, **overrides: Any) -> RunningApp:
    settings = DispatcherSettings(nats_url=nats_url, **{**FAST_TIMERS, **overrides})
    nc = await nats.connect(nats_url)
    app = create_dispatcher(settings, nc)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return RunningApp(app, nc, server)


async def start_gateway(nats_url: str, **overrides: Any) -> RunningApp:
    settings = EdgeGatewaySettings(nats_url=nats_url, **{"edge_secret": SECRET, **overrides})
    nc = await nats.connect(nats_url)
    app = create_gateway(settings, nc)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return RunningApp(app, nc, server)


def token(agent_id: str, secret: str = SECRET, now: float | None = None) -> str:
    return generate_edge_token(agent_id, "+15550100", secret, now=now)


def auth_headers(agent_id: str, bearer: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer or token(agent_id)}", "X-Edge-Agent-Id": agent_id}


class Agent:
    """A real WebSocket edge agent: every frame it receives is queued for the test to inspect."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                await self.frames.put(json.loads(msg.data))
        self.closed.set()

    async def send(self, type_: str, data: Any) -> None:
        await self.ws.send_json({"type": type_, "data": data})

    async def next(self, type_: str | None = None, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next frame (of `type_`, skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frames.get()
                if type_ is None or frame["type"] == type_:
                    return frame

    async def command(self, timeout: float = WAIT_S) -> dict[str, Any]:
        data: dict[str, Any] = (await self.next("command", timeout))["data"]
        return data

    async def ack(self, command_id: str, status: str, error: str | None = None) -> None:
        await self.send("command_ack", {"command_id": command_id, "status": status, "error": error})

    async def close_code(self, timeout: float = WAIT_S) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.session.close()


async def connect_agent(gateway: RunningApp | str, agent_id: str, bearer: str | None = None) -> Agent:
    url = gateway if isinstance(gateway, str) else gateway.ws_url
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(
            f"{url}?edge_agent_id={agent_id}", headers=auth_headers(agent_id, bearer), autoping=True
        )
    except BaseException:
        await session.close()
        raise
    return Agent(ws, session)


@contextlib.asynccontextmanager
async def edge_stack(nats_url: str, gateways: int = 1, **dispatcher_overrides: Any) -> AsyncIterator[Stack]:
    dispatcher = await start_dispatcher(nats_url, **dispatcher_overrides)
    gws = [await start_gateway(nats_url) for _ in range(gateways)]
    client_nc = await nats.connect(nats_url)
    stack = Stack(dispatcher, gws, CommandClient(client_nc), client_nc)
    try:
        yield stack
    finally:
        for agent in stack.agents:
            await agent.close()
        for gw in gws:
            await gw.stop()
        await stack.dispatcher.stop()
        await client_nc.close()


class Stack:
    def __init__(
        self, dispatcher: RunningApp, gateways: list[RunningApp], client: CommandClient, nc: NATS
    ) -> None:
        self.dispatcher = dispatcher
        self.gateways = gateways
        self.client = client
        self.nc = nc
        self.agents: list[Agent] = []

    @property
    def gateway(self) -> RunningApp:
        return self.gateways[0]

    async def agent(
        self, agent_id: str, gateway: RunningApp | None = None, bearer: str | None = None
    ) -> Agent:
        agent = await connect_agent(gateway or self.gateway, agent_id, bearer)
        self.agents.append(agent)
        return agent

    async def state_of(self, command_id: str) -> str:
        return str((await self.client.get(command_id)).state)

    async def wait_state(self, command_id: str, state: str, timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while await self.state_of(command_id) != state:
                await asyncio.sleep(0.02)
