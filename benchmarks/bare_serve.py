"""How a bare baseline server runs: uvloop, an aiohttp runner with the product's defaults, until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web

from .control import raise_fd_limit

LISTEN_BACKLOG = 4096  # as shared/runtime/service.py


def serve(create_app: Callable[[], Awaitable[web.Application]], port: int) -> None:
    """Serve the app on 127.0.0.1:`port` with the product's listen backlog."""
    raise_fd_limit()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(await create_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=LISTEN_BACKLOG).start()
        await stop.wait()
        await runner.cleanup()

    uvloop.run(main())
