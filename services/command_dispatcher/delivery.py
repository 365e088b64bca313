"""Handing commands to whichever gateway replica holds the agent's socket, or to a sync poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS

from shared.broker.connection import request
from shared.broker.kv import Bucket, WrongRevision
from shared.protocol import codec, subjects
from shared.protocol.agents import AgentPresence, deliver_request
from shared.protocol.errors import IkiroError, NoResponders

from .lifecycle import TimerAction, Timing, due_for_pull, mark_sent, pull_order, timer_action
from .metrics import DispatcherMetrics
from .records import Record, command_data
from .store import CommandStore
from .view import View

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0
OFFLINE_RECHECK_S = 1.0


class Delivery:
    def __init__(
        self,
        nc: NATS,
        store: CommandStore,
        view: View,
        agents: Bucket,
        timing: Timing,
        metrics: DispatcherMetrics,
        deliver_timeout_s: float,
    ) -> None:
        self.nc = nc
        self.store = store
        self.view = view
        self.agents = agents
        self.timing = timing
        self.metrics = metrics
        self.deliver_timeout_s = deliver_timeout_s

    async def push(self, record: Record) -> None:
        """Hand a record just marked sent to the socket it names.

        A failure leaves it `sent`: its ack timeout sends it again, a reconnect at once. Nobody
        listening at all means the gateway holding the socket died: the agent is marked offline.
        """
        assert record.sent_to is not None
        link = self.view.link(record.edge_agent_id)
        if link is None or link.connection_id != record.sent_to or not link.gateway_id:
            # That socket is gone or replaced already: the new one pulls it, or its timer resends it.
            self.metrics.deliveries("stale").inc()
            return
        body = deliver_request(record.sent_to, codec.encode("command", command_data(record)))
        try:
            await request(self.nc, subjects.deliver(link.gateway_id), body, self.deliver_timeout_s)
        except IkiroError as err:
            self.metrics.deliveries("failed").inc()
            log.info(
                "delivery failed: %s",
                err.message,
                extra={"command_id": record.command_id, "edge_agent_id": record.edge_agent_id},
            )
            if isinstance(err, NoResponders):
                await self.mark_offline(record.edge_agent_id, record.sent_to)
            return
        self.metrics.deliveries("delivered").inc()

    async def send(self, command_id: str) -> None:
        """Send (or send again) a due command over the agent's current socket."""

        def change(current: Record) -> Record | None:
            link = self.view.link(current.edge_agent_id)
            now = time.time()
            action, _ = timer_action(current, now, self.timing, link)
            if link is None or action not in (TimerAction.DELIVER, TimerAction.REDELIVER):
                return None
            return mark_sent(current, link.connection_id, now)

        sent = await self.store.transition(command_id, change)
        if sent is not None:
            await self.push(sent)

    async def mark_offline(self, edge_agent_id: str, connection_id: str) -> None:
        """Nobody answered for the socket: unless it answers a probe a moment later (its gateway may
        have been between NATS servers) or a newer socket claimed the agent, say it is gone."""

        def current() -> tuple[AgentPresence, int] | None:
            found = self.view.presence.get(edge_agent_id)
            if found is None or found[0].connection_id != connection_id or not found[0].online:
                return None
            return found

        before = current()
        if before is None:
            return
        await asyncio.sleep(OFFLINE_RECHECK_S)
        try:
            await request(
                self.nc,
                subjects.deliver(before[0].gateway_id or ""),
                deliver_request(connection_id),
                PROBE_TIMEOUT_S,
            )
            return  # it answers: still there
        except NoResponders:
            pass
        except IkiroError:
            return  # a gateway too busy to answer in time: not proof the socket is gone
        found = current()
        if found is None:
            return
        presence, revision = found
        gone = presence.model_copy(update={"online": False, "disconnected_at": codec.utcnow()})
        with contextlib.suppress(WrongRevision):
            written = await self.agents.write(
                subjects.agent_key("presence", edge_agent_id), codec.dumps(gone), revision
            )
            self.view.saw_presence(gone, written)

    async def pull(self, edge_agent_id: str, connection_id: str, via_socket: bool) -> list[Record]:
        """Mark the agent's due commands sent to `connection_id` and return them in push order."""
        now = time.time()
        due = sorted(
            (
                r
                for r in self.view.unfinished(edge_agent_id)
                if due_for_pull(r, connection_id, via_socket, now, self.timing)
            ),
            key=pull_order,
        )

        def change(current: Record) -> Record | None:
            at = time.time()
            if not due_for_pull(current, connection_id, via_socket, at, self.timing):
                return None
            return mark_sent(current, connection_id, at)

        written = await asyncio.gather(*(self.store.transition(r.command_id, change) for r in due))
        sent = [r for r in written if r is not None]
        self.metrics.deliveries("pulled").inc(len(sent))
        return sent
