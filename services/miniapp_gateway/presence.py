"""Presence across replicas: connection entries, alive as long as their replica's lease, and the
reaping of dead replicas.

Each replica holds a lease (`shared.broker.leases`, keys `r.<replica_id>`). Each connection has an
entry `c.<replica_id>.<session_id>.<connection_id>`. When a replica dies its lease expires and:

- every replica following the leases drops the dead replica's connections from its session views
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

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api

from shared.broker.connection import NATS_ERRORS
from shared.broker.kv import KV_OPERATION, MARKER_REASON, Bucket, is_removal
from shared.broker.leases import Leases
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
        self.leases = Leases(bucket, owner, "presence", subjects.MINIAPP_LEASE_PREFIX, heartbeat_s, ttl_s)

    @property
    def replica_id(self) -> str:
        return self.leases.replica_id

    async def start(self) -> None:
        await self.leases.start()
        self.owner.keep("presence_reaper", self._reap_forever)

    async def release(self) -> None:
        await self.leases.release()

    def is_dead(self, replica_id: str) -> bool:
        return self.leases.is_dead(replica_id)

    def check_replica(self, replica_id: str) -> None:
        """An entry names a replica never seen alive: if it died before we started, reap it."""
        self.leases.check(replica_id, self.reap)

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
            filter_subject=subjects.kv_subject(self.bucket.name, f"{subjects.MINIAPP_LEASE_PREFIX}.*"),
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
                        replica_id = msg.subject.rsplit(".", 1)[-1]
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
