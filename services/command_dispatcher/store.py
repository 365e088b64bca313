"""Command records in JetStream: durable create, compare-and-set transitions, lifecycle events, and
the index of each partition's unfinished commands.

Records live in the commands bucket under their id (so `edge.commands.get` finds any of them, and
`create` detects a duplicate id durably), written only by compare-and-set on the revision (the
fencing token): two replicas acting on the same command change it once; the loser re-reads and
decides again. Beside them, `EDGE_OPEN` holds one empty message per unfinished command under its
partition, purged when the command finishes: a partition's new owner reads that, never the
finished records the bucket keeps for days.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.js.errors
import orjson
from nats.aio.client import Client as NATS

from shared.broker.connection import REQUEST_TIMEOUT_S, Requests, patiently
from shared.broker.kv import Bucket, WrongRevision, compare_and_set
from shared.broker.streams import purge_subject, read_subjects
from shared.protocol import subjects
from shared.protocol.commands import TERMINAL, CommandState
from shared.protocol.errors import Unavailable

from .metrics import DispatcherMetrics
from .records import Record, RecordCodec, lifecycle_events
from .view import View

log = logging.getLogger(__name__)

Change = Callable[[Record], Record | None]
TAKEN_READ_RETRIES_S = (0.05, 0.25, 1.0)
OPEN_WRITE_PATIENCE_S = 5.0
READ_CONCURRENCY = 64


class CommandStore:
    def __init__(self, nc: NATS, bucket: Bucket, view: View, metrics: DispatcherMetrics) -> None:
        self.nc = nc
        self.bucket = bucket
        self.view = view
        self.metrics = metrics

    async def read(self, command_id: str) -> Record | None:
        """The stored record, from the stream leader (never a lagging copy)."""
        found = await self.bucket.read(command_id, fresh=True)
        return RecordCodec.decode(found.value) if found.value is not None else None

    async def create(self, record: Record) -> Record | None:
        """Store a new record durably, and note it unfinished in its partition. None when stored;
        the record already stored under its id when that is taken."""
        partition = subjects.partition_of(record.edge_agent_id)
        entry = subjects.open_entry(partition, record.command_id)
        created, opened = await asyncio.gather(
            self.bucket.write(record.command_id, RecordCodec.encode(record), 0),
            self._publish_entry(entry),
            return_exceptions=True,
        )
        if isinstance(created, WrongRevision):
            existing, revision = await self._read_taken(record.command_id)
            if existing.state in TERMINAL or subjects.partition_of(existing.edge_agent_id) != partition:
                await purge_subject(self.nc, subjects.OPEN_STREAM, entry)  # it notes nothing
                return existing
            # The submit that created it may have failed half way: make sure it is noted and known.
            if isinstance(opened, BaseException):
                await self._open(entry)
            self.view.learn(existing, revision)
            return existing
        if isinstance(created, BaseException):
            if not isinstance(opened, BaseException):
                await purge_subject(self.nc, subjects.OPEN_STREAM, entry)
            raise created
        await self._changed(None, record, created)
        if isinstance(opened, BaseException):
            await self._open(entry)  # if it fails, the caller's retry with the same id writes it
        return None

    async def _open(self, entry: str) -> None:
        """Write an index entry that a first try did not; without it, a new owner of the partition
        would never learn of the command."""

        await patiently(lambda: self._publish_entry(entry), f"index entry {entry}", OPEN_WRITE_PATIENCE_S)

    async def _publish_entry(self, entry: str) -> None:
        """An index entry, stored by the stream, on the lean request path (`Requests`: nats-py's
        publish pays a NUID, a token and a `wait_for` per call; a failure here is retried)."""
        reply = await Requests.of(self.nc).ask(entry, b"", REQUEST_TIMEOUT_S)
        ack = orjson.loads(reply.data) if reply.data else {}
        if not isinstance(ack, dict) or "error" in ack:
            raise nats.js.errors.APIError(description=f"index entry not stored: {reply.data!r}")

    async def _read_taken(self, command_id: str) -> tuple[Record, int]:
        """The record whose `create` just refused this id, with its revision. Not finding it is no
        proof it is absent: in a cluster the read may reach a store that has not caught up yet (a
        leader change). A caller told `not_found` would submit under a new id and the message would
        go out twice, so ask again and, failing that, answer `unavailable`: the caller retries with
        the same id."""
        for delay_s in (0.0, *TAKEN_READ_RETRIES_S):
            await asyncio.sleep(delay_s)
            found = await self.bucket.read(command_id, fresh=True)
            if found.value is not None:
                return RecordCodec.decode(found.value), found.revision
        raise Unavailable(f"command {command_id} is being stored; submit it again with the same id")

    async def transition(self, command_id: str, change: Change) -> Record | None:
        """Apply `change` by compare-and-set; None when there is no record or it changed nothing."""

        def decide(current: Record | None) -> Record | None:
            return change(current) if current is not None else None

        def seen(current: Record | None, revision: int) -> None:
            # Read back because another replica wrote it meanwhile: catch up, even if nothing is written.
            if current is None:
                self.view.forget(command_id)
            else:
                self.view.learn(current, revision)

        done = await compare_and_set(
            self.bucket,
            command_id,
            RecordCodec,
            decide,
            cached=self.view.get(command_id),
            on_conflict=self.metrics.write_conflicts.inc,
            on_read=seen,
        )
        if done is None:
            return None
        new, old, revision = done
        await self._changed(old, new, revision)
        return new

    async def read_open(self, partition: int) -> list[tuple[Record, int]]:
        """The unfinished records of `partition` as stored, from its index; entries of commands that
        finished (or were never stored) are purged on the way."""
        prefix = subjects.open_of_partition(partition)[:-1]
        names = await read_subjects(self.nc, subjects.OPEN_STREAM, subjects.open_of_partition(partition))
        ids = [name[len(prefix) :] for name in names]
        found = await self.bucket.read_many(ids)
        # A batch may be answered by a replica a moment behind: what it lacks is asked of the leader.
        missing = [cid for cid in ids if cid not in found]
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def read_fresh(command_id: str) -> None:
            async with limit:
                read = await self.bucket.read(command_id, fresh=True)
            if read.value is not None:
                found[command_id] = read

        await asyncio.gather(*(read_fresh(cid) for cid in missing))
        records = []
        for command_id in ids:
            read = found.get(command_id)
            record = RecordCodec.decode(read.value) if read is not None and read.value is not None else None
            if (
                record is None
                or record.state in TERMINAL
                or subjects.partition_of(record.edge_agent_id) != partition
            ):
                await purge_subject(self.nc, subjects.OPEN_STREAM, subjects.open_entry(partition, command_id))
                continue
            records.append((record, read.revision if read is not None else 0))
        return records

    async def _changed(self, old: Record | None, new: Record, revision: int) -> None:
        self.view.learn(new, revision)
        subject = subjects.lifecycle(new.edge_agent_id, new.command_id)
        for event in lifecycle_events(old, new):
            await self.nc.publish(subject, event)
        if new.state in TERMINAL:
            entry = subjects.open_entry(subjects.partition_of(new.edge_agent_id), new.command_id)
            await purge_subject(self.nc, subjects.OPEN_STREAM, entry)
        self._observe(old, new)
        # Creation, every send and the final state at INFO trace a command; the acks between, DEBUG.
        sent_again = old is not None and new.attempts > old.attempts
        level = logging.INFO if old is None or sent_again or new.state in TERMINAL else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "command %s",
                new.state,
                extra={
                    "command_id": new.command_id,
                    "edge_agent_id": new.edge_agent_id,
                    "command_type": new.command_type,
                    "previous_state": old.state if old else None,
                    "attempt": new.attempts,
                    "error": new.error,
                },
            )

    def _observe(self, old: Record | None, new: Record) -> None:
        m = self.metrics
        seen = len(old.history) if old else 0
        for state, _ in new.history[seen:]:
            m.transitions(state).inc()
        since_submit = new.updated_at - new.created_at
        if new.attempts == 1 and (old is None or old.attempts == 0):
            m.time_to_sent.observe(since_submit)
        elif old is not None and new.attempts > old.attempts:
            m.redeliveries.inc()
        if new.acked_at is not None and (old is None or old.acked_at is None):
            m.time_to_received.observe(since_submit)
        if new.state in TERMINAL:
            m.time_to_final.labels(state=new.state).observe(since_submit)
            if new.state is CommandState.EXPIRED:
                m.expirations.inc()
