"""`python -m services.command_dispatcher`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from shared.service import run_service

from .app import DISPATCHER, METRICS, create_app
from .config import DispatcherSettings

if __name__ == "__main__":
    run_service(
        "command_dispatcher",
        DispatcherSettings,
        METRICS,
        create_app,
        lambda app: app[DISPATCHER].drain(),
    )
