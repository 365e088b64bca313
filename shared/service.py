"""The HTTP side every service shares: health, readiness, metrics, and the ordered graceful stop.

Stop order (DESIGN section 2): `/readyz` 503 at once -> wait `SHUTDOWN_DELAY_S` -> the service's
own drain (refuse new sockets, close open ones with 1012, finish in-flight work) -> drain NATS ->
close the listener and exit, all within `SHUTDOWN_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import nats.errors
import uvloop
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST

from shared.broker import connect
from shared.config import S, ServiceSettings, load_settings
from shared.logs import configure as configure_logging
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)

DRAINING = web.AppKey("draining", asyncio.Event)  # set at SIGTERM: /readyz answers 503
CLOSING = web.AppKey("closing", asyncio.Event)  # set SHUTDOWN_DELAY_S later: no new sockets
NATS_CLIENT = web.AppKey("nats", NATS)
METRICS = web.AppKey("metrics", ServiceMetrics)


def add_health_routes(app: web.Application, nc: NATS, metrics: ServiceMetrics) -> None:
    """Install `/healthz`, `/readyz`, `/metrics` and the draining flag on `app`."""
    app[DRAINING] = asyncio.Event()
    app[CLOSING] = asyncio.Event()
    app[NATS_CLIENT] = nc
    app[METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


def is_draining(app: web.Application) -> bool:
    return app[DRAINING].is_set()


def accepts_sockets(app: web.Application) -> bool:
    """False once shutdown is past its delay: the load balancer has had time to look elsewhere."""
    return not app[CLOSING].is_set()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    if is_draining(app):
        return web.json_response({"status": "draining"}, status=503)
    if not app[NATS_CLIENT].is_connected:
        return web.json_response({"status": "nats disconnected"}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(
    app: web.Application,
    settings: ServiceSettings,
    drain: Callable[[], Awaitable[None]],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve `app` until SIGTERM/SIGINT (or `stop`), then stop in the contract's order."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    await stop.wait()

    log.info("shutdown begins")
    app[DRAINING].set()
    app[METRICS].draining.set(1)
    nc = app[NATS_CLIENT]
    try:
        async with asyncio.timeout(settings.shutdown_grace_s):
            await asyncio.sleep(settings.shutdown_delay_s)
            app[CLOSING].set()
            await drain()
            if nc.is_connected:
                with contextlib.suppress(Exception):
                    await nc.drain()
    except TimeoutError:
        log.warning("shutdown grace exceeded, closing now")
    finally:
        await runner.cleanup()
        if not nc.is_closed:
            await nc.close()
        log.info("stopped")


def run_service(
    name: str,
    settings_cls: type[S],
    metrics: ServiceMetrics,
    create_app: Callable[[S, NATS], web.Application],
    drain: Callable[[web.Application], Awaitable[None]],
) -> None:
    """The whole life of a service process: settings, logging, NATS, serve, ordered stop."""
    settings = load_settings(settings_cls, name)
    configure_logging(name, settings.log_level, settings.json_logs)

    async def main() -> None:
        nc = await _connect_with_retry(settings, metrics, name)
        app = create_app(settings, nc)
        await serve(app, settings, lambda: drain(app))

    uvloop.run(main())
    # Everything is closed and drained by now. The interpreter's own teardown would take a
    # noticeable moment in which /healthz and /readyz are refused; the contract wants them
    # answered until the process exits, so exit at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _connect_with_retry(settings: ServiceSettings, metrics: ServiceMetrics, name: str) -> NATS:
    delay = 0.5
    while True:
        try:
            return await connect(settings, metrics, name)
        except (OSError, nats.errors.Error) as err:
            log.warning("nats not reachable yet (%s), retrying in %.1fs", err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
