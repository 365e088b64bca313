"""What the gateway tells the rest of the system about an agent: acks, status, events, presence.

Acks go to the dispatcher directly (ordered per socket, since the reader waits for each); when
it cannot be reached they are stored in JetStream for it to apply later, so none is lost.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client as NATS

from shared.broker.connection import request
from shared.broker.kv import Bucket, compare_and_set
from shared.protocol import codec, subjects
from shared.protocol.agents import PRESENCE, AgentPresence, AgentStatus, AgentSync, PresenceEvent
from shared.protocol.commands import AckRequest, PullRequest
from shared.protocol.edge import CommandAck, CommandData, PendingEvent
from shared.protocol.errors import Unavailable


class Upstream:
    def __init__(self, nc: NATS, agents: Bucket, timeout_s: float) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.agents = agents
        self.timeout_s = timeout_s

    async def ack(self, edge_agent_id: str, connection_id: str, ack: CommandAck) -> None:
        body = AckRequest(edge_agent_id=edge_agent_id, connection_id=connection_id, ack=ack).model_dump(
            mode="json"
        )
        try:
            await request(self.nc, subjects.ACKS_SUBMIT, body, self.timeout_s)
        except Unavailable:
            try:
                await self.js.publish(
                    subjects.acked(edge_agent_id), codec.dumps(body), timeout=self.timeout_s
                )
            except (nats.errors.Error, TimeoutError) as err:
                raise Unavailable("ack could not be recorded, send it again") from err

    async def pull(self, edge_agent_id: str, connection_id: str, via_socket: bool) -> list[CommandData]:
        body = PullRequest(edge_agent_id=edge_agent_id, connection_id=connection_id, via_socket=via_socket)
        reply = await request(self.nc, subjects.AGENTS_PULL, body.model_dump(mode="json"), self.timeout_s)
        return [CommandData.model_validate(c) for c in reply["commands"]]

    async def status(self, edge_agent_id: str, status: dict[str, Any]) -> None:
        record = AgentStatus(status=status, at=codec.utcnow())
        await self.agents.put(subjects.agent_key("status", edge_agent_id), codec.dumps(record))
        event = {"edge_agent_id": edge_agent_id, "status": status, "at": codec.iso(record.at)}
        await self.nc.publish(subjects.status(edge_agent_id), codec.dumps(event))

    async def events(self, edge_agent_id: str, events: list[PendingEvent]) -> list[str]:
        at = codec.now_iso()
        for event in events:
            body = {"edge_agent_id": edge_agent_id, "event": event.model_dump(mode="json"), "at": at}
            await self.nc.publish(subjects.events(edge_agent_id), codec.dumps(body))
        await self.nc.flush(timeout=math.ceil(self.timeout_s))
        return [event.event_id for event in events]

    async def synced(self, edge_agent_id: str, last_command_id: str | None) -> None:
        record = AgentSync(last_command_id=last_command_id, at=codec.utcnow())
        await self.agents.put(subjects.agent_key("sync", edge_agent_id), codec.dumps(record))

    # --- presence, fenced by epoch ---

    async def claim(self, edge_agent_id: str, connection_id: str) -> int:
        """Make `connection_id` the agent's live socket; returns its epoch (higher = newer)."""

        def claimed(current: AgentPresence | None) -> AgentPresence:
            return AgentPresence(
                edge_agent_id=edge_agent_id,
                online=True,
                connection_id=connection_id,
                epoch=(current.epoch if current else 0) + 1,
                connected_at=codec.utcnow(),
                disconnected_at=current.disconnected_at if current else None,
            )

        done = await compare_and_set(
            self.agents, subjects.agent_key("presence", edge_agent_id), PRESENCE, claimed
        )
        assert done is not None
        await self._announce(done[0], "connected", connection_id)
        return done[0].epoch

    async def release(self, edge_agent_id: str, connection_id: str) -> None:
        """Mark the agent offline, unless a newer socket has claimed it since (then say nothing)."""

        def released(current: AgentPresence | None) -> AgentPresence | None:
            if current is None or current.connection_id != connection_id or not current.online:
                return None
            return current.model_copy(update={"online": False, "disconnected_at": codec.utcnow()})

        done = await compare_and_set(
            self.agents, subjects.agent_key("presence", edge_agent_id), PRESENCE, released
        )
        if done is not None:
            await self._announce(done[0], "disconnected", connection_id)

    async def _announce(
        self, record: AgentPresence, event: Literal["connected", "disconnected"], connection_id: str
    ) -> None:
        body = PresenceEvent(
            edge_agent_id=record.edge_agent_id,
            event=event,
            connection_id=connection_id,
            epoch=record.epoch,
            at=codec.now_iso(),
        )
        await self.nc.publish(subjects.presence(record.edge_agent_id), codec.dumps(body))
