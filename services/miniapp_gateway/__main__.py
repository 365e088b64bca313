"""`python -m services.miniapp_gateway`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

import asyncio

from services.miniapp_gateway.app import create_app, drain
from services.miniapp_gateway.config import MiniAppSettings
from shared.broker import connect
from shared.config import load_settings
from shared.logs import configure
from shared.metrics import MiniAppGatewayMetrics
from shared.service import serve

SERVICE = "miniapp_gateway"


async def main(settings: MiniAppSettings) -> None:
    metrics = MiniAppGatewayMetrics()
    nc = await connect(settings, metrics, SERVICE)
    app = create_app(settings, nc, metrics)
    await serve(app, settings, lambda: drain(app))


if __name__ == "__main__":
    settings = load_settings(MiniAppSettings, SERVICE)
    configure(SERVICE, settings.log_level, settings.json_logs)
    try:
        import uvloop

        uvloop.run(main(settings))
    except ImportError:
        asyncio.run(main(settings))
