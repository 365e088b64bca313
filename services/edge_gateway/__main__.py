"""`python -m services.edge_gateway`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from shared.runtime.service import run_service

from .app import create_app
from .config import EdgeGatewaySettings
from .metrics import EdgeGatewayMetrics

if __name__ == "__main__":
    run_service("edge_gateway", EdgeGatewaySettings, EdgeGatewayMetrics, create_app)
