"""The edge gateway's aiohttp app: `/edge/ws`, `/edge/sync`, health, readiness, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from nats.aio.client import Client as NATS

from shared.edge_protocol import MAX_SYNC_BODY_BYTES
from shared.metrics import EdgeGatewayMetrics
from shared.service import add_health_routes

from .config import EdgeGatewaySettings
from .gateway import Gateway
from .keys import GATEWAY, SYNC_LIMITER
from .sync import SyncLimiter, edge_sync
from .ws import edge_ws

METRICS = EdgeGatewayMetrics()


async def _gateway_lifecycle(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    yield
    await gateway.stop()


def create_app(settings: EdgeGatewaySettings, nc: NATS) -> web.Application:
    # One byte over the sync limit still reads, so the handler can answer 413 itself.
    app = web.Application(client_max_size=MAX_SYNC_BODY_BYTES + 1)
    add_health_routes(app, nc, METRICS)
    app[GATEWAY] = Gateway(settings, nc, METRICS)
    app[SYNC_LIMITER] = SyncLimiter(settings.sync_rate_per_min)
    app.router.add_get("/edge/ws", edge_ws)
    app.router.add_post("/edge/sync", edge_sync)
    app.cleanup_ctx.append(_gateway_lifecycle)
    return app
