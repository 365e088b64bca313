"""`python -m services.edge_gateway`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from shared.service import run_service

from .app import METRICS, create_app
from .config import EdgeGatewaySettings
from .keys import GATEWAY

if __name__ == "__main__":
    run_service("edge_gateway", EdgeGatewaySettings, METRICS, create_app, lambda app: app[GATEWAY].drain())
