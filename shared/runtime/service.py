"""The life of a service process: health, readiness, metrics, and the ordered graceful stop.

Every service is an object with a `TaskOwner` and three steps: `start` (connect its NATS parts),
`drain` (stop accepting work, close sockets with 1012, finish what is in flight) and `stop`
(cancel what is left, give up leases; called once, while NATS is still connected). `service_app`
wraps it in an aiohttp app with `/healthz`, `/readyz` and `/metrics`; `run_service` runs it as a
process until SIGTERM.

Stop order (DESIGN section 2): `/readyz` 503 at once -> wait `SHUTDOWN_DELAY_S` -> the service's
drain -> drain NATS -> close the listener and exit, all within `SHUTDOWN_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import nats.errors
import uvloop
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST

from shared.broker.connection import connect
from shared.runtime.config import S, ServiceSettings, load_settings
from shared.runtime.http import GuardedRunner
from shared.runtime.logs import configure as configure_logging
from shared.runtime.metrics import ServiceMetrics
from shared.runtime.tasks import TaskOwner

log = logging.getLogger(__name__)

MS = TypeVar("MS", bound=ServiceMetrics)

# Connections the kernel queues before accept: aiohttp's default of 128 overflows when a killed
# gateway's agents all arrive at another at once (the kernel drops their SYNs and each retries a
# second or more later). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


class Service(Protocol):
    tasks: TaskOwner

    async def start(self) -> None: ...
    async def drain(self) -> None: ...
    async def stop(self) -> None: ...


DRAINING = web.AppKey("draining", asyncio.Event)  # set at SIGTERM: /readyz answers 503
CLOSING = web.AppKey("closing", asyncio.Event)  # set SHUTDOWN_DELAY_S later: no new sockets
NATS_CLIENT = web.AppKey("nats", NATS)
METRICS = web.AppKey("metrics", ServiceMetrics)
SERVICE = web.AppKey("service", Service)
STOPPED = web.AppKey("stopped", asyncio.Event)


def service_app(service: Service, nc: NATS, metrics: ServiceMetrics, **options: Any) -> web.Application:
    """An aiohttp app running `service`, with `/healthz`, `/readyz` and `/metrics`."""
    app = web.Application(**options)
    app[DRAINING] = asyncio.Event()
    app[CLOSING] = asyncio.Event()
    app[NATS_CLIENT] = nc
    app[METRICS] = metrics
    app[SERVICE] = service
    app[STOPPED] = asyncio.Event()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.cleanup_ctx.append(_run)
    return app


def new_task_owner(metrics: ServiceMetrics) -> TaskOwner:
    return TaskOwner(metrics.task_failures, metrics.tasks_down)


async def _run(app: web.Application) -> AsyncIterator[None]:
    await app[SERVICE].start()
    yield
    await stop_service(app)


async def stop_service(app: web.Application) -> None:
    """The service's `stop`, once (the ordered shutdown runs it before NATS drains)."""
    if not app[STOPPED].is_set():
        app[STOPPED].set()
        await app[SERVICE].stop()


def accepts_sockets(app: web.Application) -> bool:
    """False once shutdown is past its delay: the load balancer has had time to look elsewhere."""
    return not app[CLOSING].is_set()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[DRAINING].is_set():
        return web.json_response({"status": "draining"}, status=503)
    if not app[NATS_CLIENT].is_connected:
        return web.json_response({"status": "nats disconnected"}, status=503)
    down = app[SERVICE].tasks.down
    if down:
        return web.json_response({"status": f"not running: {', '.join(sorted(down))}"}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(app: web.Application, settings: ServiceSettings, stop: asyncio.Event | None = None) -> None:
    """Serve `app` until SIGTERM/SIGINT (or `stop`), then stop in the contract's order."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = GuardedRunner(app, app[METRICS].http_refused, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.port, backlog=LISTEN_BACKLOG)
    await site.start()
    log.info("listening", extra={"host": settings.listen_host, "port": settings.port})
    await stop.wait()

    log.info("shutdown begins")
    app[DRAINING].set()
    app[METRICS].draining.set(1)
    nc = app[NATS_CLIENT]
    try:
        async with asyncio.timeout(settings.shutdown_grace_s):
            await asyncio.sleep(settings.shutdown_delay_s)
            app[CLOSING].set()
            await app[SERVICE].drain()
            await stop_service(app)
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
    metrics_cls: Callable[[], MS],
    create_app: Callable[[S, NATS, MS], web.Application],
) -> None:
    """The whole life of a service process: settings, logging, NATS, serve, ordered stop."""
    settings = load_settings(settings_cls, name)
    configure_logging(name, settings.log_level, settings.json_logs)
    metrics = metrics_cls()

    async def main() -> None:
        nc = await _connect_with_retry(settings, metrics, name)
        await serve(create_app(settings, nc, metrics), settings)

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
