"""Command records in JetStream KV: durable create, compare-and-set transitions, lifecycle events.

Every write is a compare-and-set on the record's revision (the fencing token), so two replicas
acting on the same command change it once; the loser re-reads and decides again. A transition
starts from this replica's view of the record, which may lag the store but never lead it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS

from shared.broker.kv import Bucket, WrongRevision, compare_and_set
from shared.protocol import subjects
from shared.protocol.commands import TERMINAL, CommandState

from .metrics import DispatcherMetrics
from .records import Record, RecordCodec, lifecycle_events
from .view import View

log = logging.getLogger(__name__)

Change = Callable[[Record], Record | None]


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

    async def create(self, record: Record) -> bool:
        """Store a new record durably; False when its id is taken already."""
        try:
            revision = await self.bucket.write(record.command_id, self.encode(record), 0)
        except WrongRevision:
            return False
        finally:
            self.view.writing.pop(record.command_id, None)
        await self._changed(None, record, revision)
        return True

    async def transition(self, command_id: str, change: Change) -> Record | None:
        """Apply `change` by compare-and-set; None when there is no record or it changed nothing."""

        def decide(current: Record | None) -> Record | None:
            return change(current) if current is not None else None

        try:
            done = await compare_and_set(
                self.bucket,
                command_id,
                self,
                decide,
                cached=self.view.get(command_id),
                on_conflict=self.metrics.write_conflicts.inc,
            )
        finally:
            self.view.writing.pop(command_id, None)
        if done is None:
            return None
        new, old, revision = done
        await self._changed(old, new, revision)
        return new

    # How records are read and written here: the `Codec` of `compare_and_set`.

    decode = staticmethod(RecordCodec.decode)

    def encode(self, record: Record) -> bytes:
        """The record as stored, told to the view before it is written (`View.writing`)."""
        data = RecordCodec.encode(record)
        self.view.writing[record.command_id] = (data, record)
        return data

    async def _changed(self, old: Record | None, new: Record, revision: int) -> None:
        self.view.learn(new, revision)
        subject = subjects.lifecycle(new.edge_agent_id, new.command_id)
        for event in lifecycle_events(old, new):
            await self.nc.publish(subject, event)
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
