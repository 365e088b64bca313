"""`python -m services.miniapp_gateway`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from services.miniapp_gateway.app import create_app, drain
from services.miniapp_gateway.config import MiniAppSettings
from shared.metrics import MiniAppGatewayMetrics
from shared.service import run_service

if __name__ == "__main__":
    metrics = MiniAppGatewayMetrics()
    run_service(
        "miniapp_gateway",
        MiniAppSettings,
        metrics,
        lambda settings, nc: create_app(settings, nc, metrics),
        drain,
    )
