"""The command dispatcher: its NATS API, the partitions it owns, timers and the stored-ack consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig

from shared.broker.connection import serve_requests
from shared.broker.streams import ensure_edge
from shared.protocol import subjects
from shared.protocol.errors import ErrorCode, IkiroError
from shared.runtime.service import new_task_owner, service_app
from shared.runtime.tasks import KeyedWorkers

from .config import DispatcherSettings
from .delivery import Delivery
from .handlers import Handlers
from .metrics import DispatcherMetrics
from .ownership import Ownership
from .records import Record
from .store import CommandStore
from .timers import Timers
from .view import View

log = logging.getLogger(__name__)

REQUEST_CONCURRENCY = 256
QUEUE_DEPTH_EVERY_S = 5.0
LATE_READ_S = 5.0


class Dispatcher:
    def __init__(self, settings: DispatcherSettings, nc: NATS, metrics: DispatcherMetrics) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = metrics
        self.tasks = new_task_owner(metrics)
        self.requests = KeyedWorkers(REQUEST_CONCURRENCY)
        self.subs: list[Subscription] = []
        self.partition_subs: dict[int, list[Subscription]] = {}
        self.started = False
        self.view: View
        self.store: CommandStore
        self.timers: Timers
        self.handlers: Handlers
        self.delivery: Delivery
        self.ownership: Ownership

    async def start(self) -> None:
        edge = await ensure_edge(self.nc.jetstream(), self.settings.jetstream_replicas)
        timing = self.settings.timing

        def spawn(work: Coroutine[Any, Any, None]) -> None:
            self.tasks.spawn(work, "after_reply")

        # Built together, with no await between: the view's callbacks reach the timers.
        self.view = View(edge.agents, self._record_changed, self._link_changed)
        store = CommandStore(self.nc, edge.commands, self.view, self.metrics)
        self.store = store
        self.delivery = Delivery(self.nc, store, self.view, edge.agents, timing, self.metrics, spawn)
        self.ownership = Ownership(self.nc, edge.dispatchers, self.tasks, self)
        self.timers = Timers(self.view, store, self.delivery, self.ownership, timing)
        self.handlers = Handlers(
            self.nc,
            store,
            self.view,
            edge.agents,
            self.delivery,
            self.ownership,
            self.metrics,
            self.settings.max_queued_per_agent,
            spawn,
        )
        self.started = True
        await self.delivery.start()
        self.tasks.keep("timers", self.timers.run)
        # The partitions nobody else holds are read before this replica answers anything.
        await self.ownership.start()
        self.subs = await serve_requests(
            self.nc, self.handlers.routes(), subjects.DISPATCHER_QUEUE_GROUP, self.requests, log
        )
        self.tasks.keep("stored_acks", self._consume_stored_acks)
        self.tasks.keep("queue_depth", self._report_queue_depth)

    # --- partitions (`ownership.Partitions`) ---

    async def load(self, partition: int) -> None:
        await self.view.take(partition)
        await self._learn_open(partition)

    async def open(self, partition: int) -> None:
        self.partition_subs[partition] = await serve_requests(
            self.nc,
            self.handlers.partition_routes(partition),
            subjects.DISPATCHER_QUEUE_GROUP,
            self.requests,
            log,
        )
        self.tasks.spawn(self._read_late(partition), "read_late")

    async def _read_late(self, partition: int) -> None:
        """Read the partition's index once more a moment after taking it: a command its old owner
        was storing as the partition moved is noted there only after the first read."""
        await asyncio.sleep(LATE_READ_S)
        if partition in self.ownership.held:
            await self._learn_open(partition)

    async def _learn_open(self, partition: int) -> None:
        """Learn the partition's unfinished records as stored (those known at a newer revision are
        kept as they are)."""
        for record, revision in await self.store.read_open(partition):
            self.view.learn(record, revision)

    async def drop(self, partition: int) -> None:
        for sub in self.partition_subs.pop(partition, []):
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        await self.view.drop(partition)

    def _record_changed(self, record: Record, revision: int) -> None:
        self.timers.schedule(record, revision)

    def _link_changed(self, edge_agent_id: str) -> None:
        self.timers.reschedule_agent(edge_agent_id)

    async def _consume_stored_acks(self) -> None:
        """Acks a gateway could not hand over directly were stored in JetStream: apply them now."""
        sub = await self.nc.jetstream().pull_subscribe(
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
                for msg in msgs:
                    try:
                        await self.handlers.route_acks(msg.data)
                    except IkiroError as err:
                        if err.code is ErrorCode.UNAVAILABLE:
                            await msg.nak(delay=1.0)
                            continue
                        # Refused for what it is, not for when: it would be refused forever.
                        log.error("stored acks dropped: %s", err.message)
                    except Exception:
                        log.exception("stored acks failed")
                        await msg.nak(delay=1.0)
                        continue
                    await msg.ack()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _report_queue_depth(self) -> None:
        while True:
            self.metrics.queue_depth.set(len(self.view.records))
            self.metrics.partitions_owned.set(len(self.ownership.held))
            await asyncio.sleep(QUEUE_DEPTH_EVERY_S)

    async def drain(self) -> None:
        """Take no new requests, let in-flight ones finish, then hand the partitions over."""
        for sub in self.subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self.subs.clear()
        if self.started:
            await self.ownership.stop()
        await self.requests.join()

    async def stop(self) -> None:
        await self.tasks.close()
        await self.requests.close()
        if self.started:
            await self.view.stop()
            await self.delivery.stop()
            await self.ownership.stop()


DISPATCHER = web.AppKey("dispatcher", Dispatcher)


def create_app(
    settings: DispatcherSettings, nc: NATS, metrics: DispatcherMetrics | None = None
) -> web.Application:
    dispatcher = Dispatcher(settings, nc, metrics or DispatcherMetrics())
    app = service_app(dispatcher, nc, dispatcher.metrics)
    app[DISPATCHER] = dispatcher
    return app
