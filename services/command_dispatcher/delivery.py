"""Handing commands to whichever gateway replica holds the agent's socket, or to a sync poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.broker.connection import NATS_ERRORS, NO_RESPONDERS, STATUS, request
from shared.broker.kv import Bucket, WrongRevision
from shared.protocol import codec, subjects
from shared.protocol.agents import deliver_request
from shared.protocol.errors import IkiroError, NoResponders

from .lifecycle import TimerAction, Timing, due_for_pull, mark_sent, pull_order, timer_action
from .metrics import DispatcherMetrics
from .records import Record, command_data
from .store import CommandStore
from .view import Present, View

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0
OFFLINE_RECHECK_S = 1.0
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Delivery:
    def __init__(
        self,
        nc: NATS,
        store: CommandStore,
        view: View,
        agents: Bucket,
        timing: Timing,
        metrics: DispatcherMetrics,
        spawn: Spawn,
    ) -> None:
        self.nc = nc
        self.store = store
        self.view = view
        self.agents = agents
        self.timing = timing
        self.metrics = metrics
        self.spawn = spawn  # runs work that must not hold up the failure subscription (an offline mark)
        self._failures = nc.new_inbox()  # where gateways answer a delivery that failed
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._failures}.*.*.*", cb=self._on_failure)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._sub.unsubscribe()

    async def push(self, record: Record) -> None:
        """Hand a record just marked sent to the socket it names.

        Only a failure is answered (the gateway has no such socket, or nobody listens at all), on
        a subject naming the agent, the socket and the command: a reply to every delivery cost a
        future, a timer and a message in per command. A failure leaves the command `sent`: its ack
        timeout sends it again, a reconnect at once; nobody listening means the gateway holding
        the socket died, and the agent is marked offline.
        """
        assert record.sent_to is not None
        link = self.view.link(record.edge_agent_id)
        if link is None or link.connection_id != record.sent_to or not link.gateway_id:
            # That socket is gone or replaced already: the new one pulls it, or its timer resends it.
            self.metrics.deliveries("stale").inc()
            return
        body = deliver_request(record.sent_to, codec.encode("command", command_data(record)))
        reply = f"{self._failures}.{record.edge_agent_id}.{record.sent_to}.{record.command_id}"
        try:
            await self.nc.publish(subjects.deliver(link.gateway_id), body, reply=reply)
        except NATS_ERRORS as err:
            self._failed(record.edge_agent_id, record.command_id, str(err))
            return
        self.metrics.deliveries("sent").inc()

    async def _on_failure(self, msg: Msg) -> None:
        edge_agent_id, connection_id, command_id = msg.subject[len(self._failures) + 1 :].split(".", 2)
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            self._failed(edge_agent_id, command_id, "nobody answers for the socket")
            self.spawn(self.mark_offline(edge_agent_id, connection_id))
            return
        try:
            answer = codec.loads(msg.data)
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        self._failed(edge_agent_id, command_id, str(error.get("message")) if isinstance(error, dict) else "")

    def _failed(self, edge_agent_id: str, command_id: str, why: str) -> None:
        self.metrics.deliveries("failed").inc()
        log.info("delivery failed: %s", why, extra={"command_id": command_id, "edge_agent_id": edge_agent_id})

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

    async def catch_up(self, edge_agent_id: str) -> None:
        """Send what the agent's connect pull would have, over its current socket, in push order
        (that pull may not have reached an owner: the partition was moving)."""
        link = self.view.link(edge_agent_id)
        if link is None:
            return
        for record in await self.pull(edge_agent_id, link.connection_id, via_socket=True):
            await self.push(record)

    async def mark_offline(self, edge_agent_id: str, connection_id: str) -> None:
        """Nobody answered for the socket: unless it answers a probe a moment later (its gateway may
        have been between NATS servers) or a newer socket claimed the agent, say it is gone."""

        def current() -> Present | None:
            found = self.view.presence.get(edge_agent_id)
            if found is None or found.presence.connection_id != connection_id or not found.presence.online:
                return None
            return found

        before = current()
        if before is None:
            return
        await asyncio.sleep(OFFLINE_RECHECK_S)
        try:
            await request(
                self.nc,
                subjects.deliver(before.presence.gateway_id or ""),
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
