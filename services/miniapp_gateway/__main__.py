"""`python -m services.miniapp_gateway`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from shared.runtime.service import run_service

from .app import create_app
from .config import MiniAppSettings
from .metrics import MiniAppGatewayMetrics

if __name__ == "__main__":
    run_service("miniapp_gateway", MiniAppSettings, MiniAppGatewayMetrics, create_app)
