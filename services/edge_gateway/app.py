"""The edge gateway's aiohttp app: `/edge/ws`, `/edge/sync`, health, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from shared.protocol.edge import MAX_SYNC_BODY_BYTES
from shared.runtime.service import service_app

from .config import EdgeGatewaySettings
from .gateway import GATEWAY, Gateway
from .metrics import EdgeGatewayMetrics
from .sync import edge_sync
from .ws import edge_ws


def create_app(
    settings: EdgeGatewaySettings, nc: NATS, metrics: EdgeGatewayMetrics | None = None
) -> web.Application:
    gateway = Gateway(settings, nc, metrics or EdgeGatewayMetrics())
    # One byte over the sync limit still reads, so the handler can answer 413 itself.
    app = service_app(gateway, nc, gateway.metrics, client_max_size=MAX_SYNC_BODY_BYTES + 1)
    app[GATEWAY] = gateway
    app.router.add_get("/edge/ws", edge_ws)
    app.router.add_post("/edge/sync", edge_sync)
    return app
