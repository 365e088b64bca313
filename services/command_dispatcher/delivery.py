"""Handing commands to whichever gateway replica holds the agent's socket, or to a sync poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from nats.aio.client import Client as NATS

from shared.broker.connection import request
from shared.broker.kv import Bucket, WrongRevision
from shared.protocol import codec, subjects
from shared.protocol.agents import PRESENCE, AgentPresence, DeliverRequest
from shared.protocol.commands import CommandRecord, CommandState
from shared.protocol.edge import CommandData
from shared.protocol.errors import IkiroError, NoResponders

from .lifecycle import TimerAction, Timing, due_for_pull, moved, pull_order, timer_action
from .metrics import DispatcherMetrics
from .store import CommandStore

log = logging.getLogger(__name__)


def mark_sent(record: CommandRecord, connection_id: str, now: datetime) -> CommandRecord:
    return moved(
        record, CommandState.SENT, now, attempts=record.attempts + 1, sent_at=now, sent_to=connection_id
    )


class Delivery:
    def __init__(
        self,
        nc: NATS,
        store: CommandStore,
        agents: Bucket,
        timing: Timing,
        metrics: DispatcherMetrics,
        deliver_timeout_s: float,
    ) -> None:
        self.nc = nc
        self.store = store
        self.agents = agents
        self.timing = timing
        self.metrics = metrics
        self.deliver_timeout_s = deliver_timeout_s

    async def send(self, record: CommandRecord) -> bool:
        """Send (or send again) a due command over the agent's socket; False when it is offline."""
        found = await self.agents.get(subjects.agent_key("presence", record.edge_agent_id), PRESENCE)
        if found is None or not found[0].online or found[0].connection_id is None:
            return False
        presence, revision = found
        connection_id = presence.connection_id
        assert connection_id is not None

        def change(current: CommandRecord) -> CommandRecord | None:
            now = codec.utcnow()
            action, _ = timer_action(current, now, self.timing)
            if action not in (TimerAction.DELIVER, TimerAction.REDELIVER):
                return None
            return mark_sent(current, connection_id, now)

        sent = await self.store.transition(record.command_id, change)
        if sent is not None:
            await self.push(sent, presence, revision)
        return True

    async def push(self, record: CommandRecord, presence: AgentPresence, revision: int) -> None:
        """One request to the connection; a missing socket marks the agent offline (fenced)."""
        body = DeliverRequest(connection_id=record.sent_to or "", command=record.to_command_data())
        try:
            await request(
                self.nc,
                subjects.deliver(record.edge_agent_id),
                body.model_dump(mode="json"),
                self.deliver_timeout_s,
            )
        except IkiroError as err:
            # The command stays `sent`: the ack timeout sends it again, a reconnect at once.
            self.metrics.deliveries.labels(result="failed").inc()
            log.info(
                "delivery failed: %s",
                err.message,
                extra={"command_id": str(record.command_id), "edge_agent_id": record.edge_agent_id},
            )
            if isinstance(err, NoResponders):  # no socket anywhere: its gateway died
                await self.mark_offline(presence, revision)
            return
        self.metrics.deliveries.labels(result="delivered").inc()

    async def mark_offline(self, presence: AgentPresence, revision: int) -> None:
        """The socket the record names is gone (its gateway died): say so, unless a newer one exists."""
        gone = presence.model_copy(update={"online": False, "disconnected_at": codec.utcnow()})
        with contextlib.suppress(WrongRevision):
            await self.agents.write(
                subjects.agent_key("presence", presence.edge_agent_id),
                gone.model_dump_json().encode(),
                revision,
            )

    async def pull(self, edge_agent_id: str, connection_id: str, via_socket: bool) -> list[CommandData]:
        """Mark the agent's due commands sent to `connection_id` and return them in push order."""
        ids = await self.store.active_command_ids(edge_agent_id)
        found = await asyncio.gather(*(self.store.get(cid, fresh=False) for cid in ids))
        now = codec.utcnow()
        due = sorted(
            (
                got[0]
                for got in found
                if got and due_for_pull(got[0], connection_id, via_socket, now, self.timing)
            ),
            key=pull_order,
        )

        def change(current: CommandRecord) -> CommandRecord | None:
            at = codec.utcnow()
            if not due_for_pull(current, connection_id, via_socket, at, self.timing):
                return None
            return mark_sent(current, connection_id, at)

        sent = [
            r for r in await asyncio.gather(*(self.store.transition(r.command_id, change) for r in due)) if r
        ]
        # Their timers may sleep until an offline recheck: wake them to time the ack instead.
        await asyncio.gather(*(self.store.arm_timer(record) for record in sent))
        out = [record.to_command_data() for record in sent]
        self.metrics.deliveries.labels(result="pulled").inc(len(out))
        return out
