"""Presence across replicas: replica leases, connection entries, and reaping of dead replicas.

Each replica holds a lease `r.<replica_id>` in the presence bucket, written with a per-message TTL
and renewed by compare-and-set every heartbeat. Each connection has an entry
`c.<replica_id>.<session_id>.<connection_id>` that lives as long as its replica's lease. When a
replica dies its lease expires, the server leaves a delete marker, and:

- every replica watching the leases drops the dead replica's connections from its session views
  at once (`left` to its own sockets);
- one replica, through a shared durable consumer on the leases, deletes the dead entries and
  publishes `left` on `miniapp.presence.<session_id>` for backend consumers.

A replica whose own lease expired (cut off from NATS for longer than the TTL) is fenced: it
closes its sockets with 1012 and starts over under a new replica id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api

from shared.broker.kv import KV_OPERATION, MARKER_REASON, Bucket, WrongRevision, is_removal, stop_watcher
from shared.protocol import codec, subjects
from shared.protocol.miniapp import (
    CONNECTION_RECORD,
    ConnectionRecord,
    ConnectionStatus,
    PresenceEvent,
    PresenceNotice,
)
from shared.runtime.tasks import TaskOwner

from .metrics import MiniAppGatewayMetrics

log = logging.getLogger(__name__)

DeathListener = Callable[[str], None]
Fenced = Callable[[], Coroutine[Any, Any, None]]
NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError)


def new_id() -> str:
    return uuid.uuid4().hex


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Presence:
    def __init__(
        self,
        nc: NATS,
        bucket: Bucket,
        metrics: MiniAppGatewayMetrics,
        owner: TaskOwner,
        heartbeat_s: float,
        ttl_s: int,
    ) -> None:
        self.nc = nc
        self.bucket = bucket
        self.metrics = metrics
        self.owner = owner
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.replica_id = new_id()
        self.live: set[str] = set()
        self.dead: set[str] = set()
        self.on_death: list[DeathListener] = []
        self.on_fenced: Fenced | None = None
        self._lease_rev = 0
        self._leases_synced = asyncio.Event()

    # --- lifecycle ---

    async def start(self) -> None:
        await self._take_lease()
        self.owner.keep("presence_lease_watch", self._watch_leases)
        self.owner.keep("presence_heartbeat", self._heartbeat)
        self.owner.keep("presence_reaper", self._reap_forever)
        async with asyncio.timeout(10):
            await self._leases_synced.wait()

    async def release(self) -> None:
        """Drop this replica's lease (its tasks are stopped by then): the others reap at once."""
        with contextlib.suppress(*NATS_ERRORS):
            await self.bucket.delete(subjects.miniapp_lease_key(self.replica_id))

    # --- this replica's lease ---

    async def _take_lease(self) -> None:
        key = subjects.miniapp_lease_key(self.replica_id)
        body = codec.dumps({"replica_id": self.replica_id, "at": codec.now_iso()})
        self._lease_rev = await self.bucket.write(key, body, 0, self.ttl_s)
        self.live.add(self.replica_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            key = subjects.miniapp_lease_key(self.replica_id)
            body = codec.dumps({"replica_id": self.replica_id, "at": codec.now_iso()})
            try:
                self._lease_rev = await self.bucket.write(key, body, self._lease_rev, self.ttl_s)
            except WrongRevision:
                await self._fenced()
            except NATS_ERRORS as err:
                log.warning("lease renewal failed: %s", err)

    async def _fenced(self) -> None:
        log.error("this replica's lease expired; closing its sockets", extra={"replica_id": self.replica_id})
        if self.on_fenced is not None:
            await self.on_fenced()
        self.replica_id = new_id()
        await self._take_lease()

    # --- every replica's liveness ---

    async def _watch_leases(self) -> None:
        watcher = await self.bucket.kv.watch(subjects.MINIAPP_LEASES)
        try:
            async for entry in watcher:
                if entry is None:
                    self._leases_synced.set()
                    continue
                replica_id = subjects.parse_lease_key(entry.key)
                if is_removal(entry.operation):
                    self._mark_dead(replica_id)
                elif replica_id not in self.dead:
                    self.live.add(replica_id)
        finally:
            await stop_watcher(watcher)

    def _mark_dead(self, replica_id: str) -> None:
        if replica_id == self.replica_id or replica_id in self.dead:
            return
        self.live.discard(replica_id)
        self.dead.add(replica_id)
        for listener in self.on_death:
            listener(replica_id)

    def is_dead(self, replica_id: str) -> bool:
        return replica_id in self.dead

    def check_replica(self, replica_id: str) -> None:
        """Learn whether a replica we hold no lease for is alive (an orphan entry's replica)."""
        if replica_id in self.live or replica_id in self.dead:
            return
        self.live.add(replica_id)  # presumed alive until the lease read says otherwise
        self.owner.spawn(self._check(replica_id), "presence_check_replica")

    async def _check(self, replica_id: str) -> None:
        try:
            read = await self.bucket.read(subjects.miniapp_lease_key(replica_id), fresh=True)
        except NATS_ERRORS:
            self.live.discard(replica_id)  # ask again on its next entry
            return
        if read.value is None:
            self._mark_dead(replica_id)
            await self.reap(replica_id)

    # --- connection entries ---

    async def add(self, session_id: str, connection_id: str, user_id: str) -> int:
        """Write a pending entry; its revision is the connection's place in the admission order."""
        record = ConnectionRecord(
            session_id=session_id,
            connection_id=connection_id,
            user_id=user_id,
            replica_id=self.replica_id,
            status=ConnectionStatus.PENDING,
        )
        key = subjects.miniapp_connection_key(self.replica_id, session_id, connection_id)
        return await self.bucket.write(key, codec.dumps(record), 0)

    async def activate(self, record: ConnectionRecord, revision: int) -> int:
        active = record.model_copy(update={"status": ConnectionStatus.ACTIVE, "created_rev": revision})
        key = subjects.miniapp_connection_key(record.replica_id, record.session_id, record.connection_id)
        return await self.bucket.write(key, codec.dumps(active), revision)

    async def remove(self, replica_id: str, session_id: str, connection_id: str) -> None:
        await self.bucket.delete(subjects.miniapp_connection_key(replica_id, session_id, connection_id))

    async def publish(
        self, session_id: str, event: PresenceEvent, user_id: str, connection_id: str, count: int
    ) -> None:
        notice = PresenceNotice(
            session_id=session_id,
            event=event,
            user_id=user_id,
            connection_id=connection_id,
            connection_count=count,
            at=codec.now_iso(),
        )
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subjects.miniapp_presence(session_id), codec.dumps(notice))

    async def scan_session(self, session_id: str) -> list[ConnectionRecord]:
        """The admitted connections of a session on live replicas, read from the bucket."""
        entries = await self.bucket.scan(subjects.miniapp_connections_of_session(session_id))
        records = [CONNECTION_RECORD.validate_json(value) for value, _ in entries.values()]
        return [r for r in records if r.status is ConnectionStatus.ACTIVE and not self.is_dead(r.replica_id)]

    # --- reaping dead replicas (one replica handles each death, via a shared durable consumer) ---

    async def _reap_forever(self) -> None:
        config = api.ConsumerConfig(
            durable_name=subjects.MINIAPP_REAPER_CONSUMER,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30,
            headers_only=True,
            filter_subject=subjects.kv_subject(self.bucket.name, subjects.MINIAPP_LEASES),
        )
        sub = await self.bucket.js.pull_subscribe(
            config.filter_subject or "",
            durable=subjects.MINIAPP_REAPER_CONSUMER,
            stream=self.bucket.stream,
            config=config,
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=16, timeout=max(self.heartbeat_s, 1.0))
                except (nats.errors.TimeoutError, TimeoutError):
                    # nats-py's fetch can turn our own cancellation into a timeout.
                    if _cancelling():
                        raise asyncio.CancelledError from None
                    continue
                except nats.errors.Error as err:
                    log.warning("reaper fetch failed: %s", err)
                    await asyncio.sleep(self.heartbeat_s)
                    continue
                for msg in msgs:
                    headers = msg.headers or {}
                    if is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers:
                        replica_id = subjects.parse_lease_key(msg.subject)
                        self._mark_dead(replica_id)
                        try:
                            await self.reap(replica_id)
                        except NATS_ERRORS as err:
                            log.warning("reaping %s failed, will retry: %s", replica_id, err)
                            await msg.nak(delay=self.heartbeat_s)
                            continue
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def reap(self, replica_id: str) -> None:
        """Delete a dead replica's connection entries and announce each admitted one as `left`."""
        entries = await self.bucket.scan(subjects.miniapp_connections_of_replica(replica_id))
        if not entries:
            return
        gone: dict[str, list[ConnectionRecord]] = {}
        for key, (value, _) in entries.items():
            await self.bucket.delete(key)
            record = CONNECTION_RECORD.validate_json(value)
            if record.status is ConnectionStatus.ACTIVE:
                gone.setdefault(record.session_id, []).append(record)
        for session_id, records in gone.items():
            count = len(await self.scan_session(session_id)) + len(records)
            for record in records:
                count -= 1
                await self.publish(
                    session_id, PresenceEvent.LEFT, record.user_id, record.connection_id, count
                )
        self.metrics.replicas_reaped.inc()
        log.info("reaped a dead replica", extra={"replica_id": replica_id, "connections": len(entries)})
