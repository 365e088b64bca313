"""The services in-process, for tests that need their internals: each app served on a free port
with a NATS connection of its own, as one replica would be."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
from aiohttp import web
from nats.aio.client import Client as NATS

from services.command_dispatcher.app import create_app as create_dispatcher
from services.command_dispatcher.config import DispatcherSettings
from services.edge_gateway.app import create_app as create_edge_gateway
from services.edge_gateway.config import EdgeGatewaySettings
from services.miniapp_gateway.app import create_app as create_miniapp_gateway
from services.miniapp_gateway.config import MiniAppSettings
from shared.runtime.http import GuardedRunner
from shared.runtime.service import METRICS, SERVICE
from tests.harness.proc import free_port

EDGE_SECRET = "integration-edge-secret"
JWT_SECRET = "integration-supabase-secret-0123456789abcdef"
# The services fail closed (production) unless told; these apps are development ones.
DEVELOPMENT = {"environment": "development"}
FAST_TIMERS = {"ack_timeout_s": 0.5, "max_ack_timeout_s": 2.0, "offline_recheck_s": 1.0}


@dataclass
class RunningApp:
    app: web.Application
    nc: NATS
    runner: GuardedRunner
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.app[SERVICE].drain()
        await self.runner.cleanup()
        await self.nc.close()


async def serve(
    create_app: Any, settings: Any, prepare: Callable[[web.Application], None] | None = None
) -> RunningApp:
    """Serve the app; `prepare` sees it before its service starts."""
    nc = await nats.connect(settings.nats_url)
    app = create_app(settings, nc)
    if prepare is not None:
        prepare(app)
    runner = GuardedRunner(app, app[METRICS].http_refused, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningApp(app, nc, runner, port)


async def dispatcher(nats_url: str, **overrides: Any) -> RunningApp:
    return await serve(
        create_dispatcher,
        DispatcherSettings(nats_url=nats_url, **{**DEVELOPMENT, **FAST_TIMERS, **overrides}),
    )


async def edge_gateway(nats_url: str, **overrides: Any) -> RunningApp:
    return await serve(
        create_edge_gateway,
        EdgeGatewaySettings(nats_url=nats_url, edge_secret=EDGE_SECRET, **{**DEVELOPMENT, **overrides}),
    )


async def miniapp_gateway(nats_url: str, **overrides: Any) -> RunningApp:
    settings = MiniAppSettings(
        nats_url=nats_url,
        supabase_jwt_secret=JWT_SECRET,
        heartbeat_interval_s=0.3,
        presence_ttl_s=2,
        **{**DEVELOPMENT, **overrides},
    )
    return await serve(create_miniapp_gateway, settings)
