"""Command records in JetStream KV: durable create, compare-and-set transitions, lifecycle events.

Every write is a compare-and-set on the record's revision (the fencing token), so two replicas
acting on the same command change it once; the loser re-reads and decides again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

import nats.errors
from nats.aio.client import Client as NATS

from shared.broker.kv import Bucket, WrongRevision, compare_and_set
from shared.protocol import subjects
from shared.protocol.commands import RECORD, TERMINAL, CommandRecord, CommandState

from .lifecycle import lifecycle_event
from .metrics import DispatcherMetrics

log = logging.getLogger(__name__)

# Records this replica wrote or read last, so an ack or timer usually needs no read first.
RECORD_CACHE_SIZE = 20_000

Change = Callable[[CommandRecord], CommandRecord | None]


class CommandStore:
    def __init__(self, nc: NATS, bucket: Bucket, metrics: DispatcherMetrics) -> None:
        self.nc = nc
        self.js = bucket.js
        self.bucket = bucket
        self.metrics = metrics
        self._cache: OrderedDict[str, tuple[CommandRecord, int]] = OrderedDict()

    async def get(self, command_id: UUID | str, fresh: bool = True) -> tuple[CommandRecord, int] | None:
        """The record and its revision; `fresh=False` may answer from this replica's cache.

        A cached record can only be behind the stored one, never ahead, and every write is a
        compare-and-set: acting on a stale copy costs one failed write and a fresh read.
        """
        key = str(command_id)
        if not fresh and (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return cached
        found = await self.bucket.get(key, RECORD)
        return self._remember(*found) if found else None

    def _remember(self, record: CommandRecord, revision: int) -> tuple[CommandRecord, int]:
        key = str(record.command_id)
        self._cache[key] = (record, revision)
        self._cache.move_to_end(key)
        if len(self._cache) > RECORD_CACHE_SIZE:
            self._cache.popitem(last=False)
        return record, revision

    async def create(self, record: CommandRecord) -> bool:
        """Store a new record durably; False when its id is taken already."""
        try:
            revision = await self.bucket.write(str(record.command_id), record.model_dump_json().encode(), 0)
        except WrongRevision:
            return False
        self._remember(record, revision)
        await self.arm_timer(record)
        await self._changed(None, record)
        return True

    async def arm_timer(self, record: CommandRecord) -> None:
        """(Re)place the command's one timer message; the stream keeps at most one per command."""
        await self.js.publish(subjects.timer(record.edge_agent_id, str(record.command_id)), b"")

    async def transition(self, command_id: UUID | str, change: Change) -> CommandRecord | None:
        """Apply `change` by compare-and-set; None when there is no record or it changed nothing."""
        key = str(command_id)

        def decide(current: CommandRecord | None) -> CommandRecord | None:
            return change(current) if current is not None else None

        done = await compare_and_set(
            self.bucket,
            key,
            RECORD,
            decide,
            cached=self._cache.get(key),
            on_conflict=self.metrics.write_conflicts.inc,
        )
        if done is None:
            return None
        new, old, revision = done
        self._remember(new, revision)
        await self._changed(old, new)
        return new

    async def active_command_ids(self, edge_agent_id: str) -> list[str]:
        """Ids of the agent's unfinished commands: those whose timer message still exists."""
        info = await self.js.stream_info(
            subjects.TIMERS_STREAM, subjects_filter=subjects.timers_of_agent(edge_agent_id)
        )
        return [subject.rsplit(".", 1)[1] for subject in (info.state.subjects or {})]

    async def _changed(self, old: CommandRecord | None, new: CommandRecord) -> None:
        previous = old.state if old else None
        if previous is new.state and old is not None and new.attempts == old.attempts:
            return
        self.metrics.transitions.labels(state=new.state).inc()
        self._observe_latency(old, new)
        event = lifecycle_event(new, previous)
        await self.nc.publish(
            subjects.lifecycle(new.edge_agent_id, str(new.command_id)), event.model_dump_json().encode()
        )
        log.info(
            "command %s",
            new.state,
            extra={
                "command_id": str(new.command_id),
                "edge_agent_id": new.edge_agent_id,
                "command_type": str(new.command_type),
                "previous_state": previous,
                "attempt": new.attempts,
                "error": new.error,
            },
        )
        if new.state in TERMINAL:
            await self._disarm_timer(new)

    def _observe_latency(self, old: CommandRecord | None, new: CommandRecord) -> None:
        since_submit = (new.updated_at - new.created_at).total_seconds()
        if (
            new.state is CommandState.SENT
            and new.attempts == 1
            and (old is None or old.state is CommandState.QUEUED)
        ):
            self.metrics.time_to_sent.observe(since_submit)
        if old is not None and old.acked_at is None and new.acked_at is not None:
            self.metrics.time_to_received.observe(since_submit)
        if new.state in TERMINAL:
            self.metrics.time_to_final.labels(state=new.state).observe(since_submit)
            if new.state is CommandState.EXPIRED:
                self.metrics.expirations.inc()
        if (
            old is not None
            and new.state is CommandState.SENT
            and new.attempts > 1
            and new.attempts != old.attempts
        ):
            self.metrics.redeliveries.inc()

    async def _disarm_timer(self, record: CommandRecord) -> None:
        # Removing the timer message takes the command out of the active set at once; if this
        # fails the timer still fires later, sees a final state and removes itself.
        try:
            await self.js.purge_stream(
                subjects.TIMERS_STREAM, subject=subjects.timer(record.edge_agent_id, str(record.command_id))
            )
        except nats.errors.Error as err:
            log.warning("timer not removed: %s", err, extra={"command_id": str(record.command_id)})
