"""`python -m services.command_dispatcher`: settings -> NATS -> app -> serve until SIGTERM."""

from __future__ import annotations

from shared.runtime.service import run_service

from .app import create_app
from .config import DispatcherSettings
from .metrics import DispatcherMetrics

if __name__ == "__main__":
    run_service("command_dispatcher", DispatcherSettings, DispatcherMetrics, create_app)
