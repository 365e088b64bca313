"""The command dispatcher's aiohttp app: health endpoints plus the NATS API and timers it owns."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig

from shared import edge_jetstream, subjects
from shared.broker import replier
from shared.metrics import DispatcherMetrics
from shared.service import add_health_routes
from shared.workers import KeyedWorkers, cancel_and_wait

from .config import DispatcherSettings
from .delivery import Delivery
from .handlers import Handlers
from .store import CommandStore
from .timers import TimerWorker

log = logging.getLogger(__name__)

METRICS = DispatcherMetrics()
REQUEST_CONCURRENCY = 256
QUEUE_DEPTH_EVERY_S = 5.0


class Dispatcher:
    """Owns the dispatcher's subscriptions and background tasks, and stops them in order."""

    def __init__(self, settings: DispatcherSettings, nc: NATS) -> None:
        self.settings = settings
        self.nc = nc
        self.requests = KeyedWorkers(REQUEST_CONCURRENCY)
        self.subs: list[Subscription] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        js = self.nc.jetstream()
        edge = await edge_jetstream.ensure(js, self.settings.jetstream_replicas)
        store = CommandStore(self.nc, js, edge, METRICS)
        timing = self.settings.timing
        delivery = Delivery(self.nc, store, edge.agents, timing, METRICS, self.settings.deliver_timeout_s)
        self.handlers = Handlers(store, delivery, edge.agents, METRICS, self.settings.max_queued_per_agent)
        for subject, handler in self.handlers.routes().items():
            self.subs.append(
                await self.nc.subscribe(
                    subject,
                    queue=subjects.DISPATCHER_QUEUE_GROUP,
                    cb=replier(handler, log, self.requests),
                    pending_msgs_limit=10_000,
                    pending_bytes_limit=64 * 1024 * 1024,
                )
            )
        timers = TimerWorker(
            js, store, delivery, timing, self.settings.failover_s, self.settings.offline_recheck_s
        )
        self.tasks = [
            asyncio.create_task(timers.run(), name="timers"),
            asyncio.create_task(self._consume_stored_acks(), name="stored-acks"),
            asyncio.create_task(self._report_queue_depth(), name="queue-depth"),
        ]

    async def _consume_stored_acks(self) -> None:
        """Acks a gateway could not hand over directly were stored in JetStream: apply them now."""
        js = self.nc.jetstream()
        sub = await js.pull_subscribe(
            subjects.ACKS_ALL,
            durable=subjects.ACKS_CONSUMER,
            stream=subjects.ACKS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.failover_s, max_deliver=-1
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(64, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.Error as err:
                    log.warning("stored ack fetch failed: %s", err)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    try:
                        await self.handlers.handle_ack(msg.data)
                        await msg.ack()
                    except Exception:
                        log.exception("stored ack failed")
                        await msg.nak(delay=1.0)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _report_queue_depth(self) -> None:
        js = self.nc.jetstream()
        while True:
            with contextlib.suppress(Exception):
                info = await js.stream_info(subjects.TIMERS_STREAM)
                METRICS.queue_depth.set(info.state.messages)
            await asyncio.sleep(QUEUE_DEPTH_EVERY_S)

    async def drain(self) -> None:
        """Take no new requests, let in-flight ones finish, stop the timers."""
        for sub in self.subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self.subs.clear()
        await self.requests.join()
        await self.stop_tasks()

    async def stop_tasks(self) -> None:
        await cancel_and_wait(self.tasks)
        self.tasks.clear()


async def _lifecycle(dispatcher: Dispatcher, app: web.Application) -> AsyncIterator[None]:
    await dispatcher.start()
    yield
    await dispatcher.stop_tasks()
    await dispatcher.requests.close()


DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def create_app(settings: DispatcherSettings, nc: NATS) -> web.Application:
    app = web.Application()
    add_health_routes(app, nc, METRICS)
    dispatcher = Dispatcher(settings, nc)
    app[DISPATCHER] = dispatcher
    app.cleanup_ctx.append(functools.partial(_lifecycle, dispatcher))
    return app
