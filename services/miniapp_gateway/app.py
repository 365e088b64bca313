"""The MiniApp gateway's aiohttp app: the socket route, health, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from shared.runtime.service import service_app

from .config import MiniAppSettings
from .devpage import add_dev_routes
from .gateway import GATEWAY, Gateway
from .metrics import MiniAppGatewayMetrics
from .websocket import handle_socket


def create_app(
    settings: MiniAppSettings, nc: NATS, metrics: MiniAppGatewayMetrics | None = None
) -> web.Application:
    gateway = Gateway(settings, nc, metrics or MiniAppGatewayMetrics())
    app = service_app(gateway, nc, gateway.metrics)
    app[GATEWAY] = gateway
    app.router.add_get("/ws/miniapp/{session_id:[^/]*}", handle_socket)
    if settings.dev_page:
        add_dev_routes(app, settings)
    return app
