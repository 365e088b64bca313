"""What the gateway tells the rest of the system about an agent: acks, status, events, presence.

Acks go to the dispatchers owning their agents' partitions (the gateway follows the dispatchers'
leases and computes the owners as they do) in batches gathered across the gateway's sockets, one
batch in flight per lane, so each agent's acks keep their order while no reader ever waits on a
round trip; when no dispatcher can be reached a batch is stored in JetStream for one to apply
later, so none is lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from datetime import datetime
from typing import Any, Literal

from nats.aio.client import Client as NATS

from shared.broker.connection import NATS_ERRORS, request, request_owner
from shared.broker.kv import Bucket, WrongRevision
from shared.broker.leases import LiveReplicas
from shared.protocol import codec, subjects
from shared.protocol.agents import PRESENCE, AgentPresence, AgentStatus, AgentSync, PresenceEvent
from shared.protocol.commands import MAX_ACKS_PER_BATCH, AckBatch, AgentAck, PullRequest
from shared.protocol.edge import CommandAck, PendingEvent
from shared.protocol.errors import ErrorCode, IkiroError, Unavailable
from shared.runtime.tasks import TaskOwner

from .connection import EdgeConnection

log = logging.getLogger(__name__)

# Acks in flight at once from this gateway; an agent's acks always take the same lane.
ACK_LANES = 4
# How long a batch waits for a dispatcher before it is stored instead. Acks behind it in its lane
# wait as long, in this process's memory only: the bound on what a SIGKILL here can take with it.
DISPATCHER_ACK_WAIT_S = 1.0
ACK_RETRY_FIRST_S = 0.5
ACK_RETRY_MAX_S = 5.0


class Upstream:
    def __init__(self, nc: NATS, agents: Bucket, owner: TaskOwner, timeout_s: float, gateway_id: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.agents = agents
        self.owner = owner
        self.timeout_s = timeout_s
        self.gateway_id = gateway_id  # written into each presence claim: where deliveries go
        self.dispatchers = LiveReplicas(
            self.js, subjects.DISPATCHERS_BUCKET, subjects.DISPATCHER_LEASE_PREFIX
        )
        self._lanes: list[list[tuple[EdgeConnection, AgentAck]]] = [[] for _ in range(ACK_LANES)]
        self._busy: set[int] = set()  # lanes with a batch on its way
        self._acks_settled = asyncio.Event()  # no ack waits in any lane
        self._acks_settled.set()

    # --- acks: in each agent's order, batched across sockets while a batch is on its way ---

    async def queue_ack(self, conn: EdgeConnection, ack: CommandAck) -> None:
        """Forward a socket's ack; the reader goes on at once unless the socket has too many on their
        way. An agent's acks always travel in the same lane, one batch in flight per lane, so they
        reach the dispatcher in the agent's order."""
        await conn.ack_room()
        conn.acks_in_flight += 1
        lane = self._lanes[zlib.crc32(conn.edge_agent_id.encode()) % len(self._lanes)]
        lane.append(
            (conn, AgentAck(edge_agent_id=conn.edge_agent_id, connection_id=conn.connection_id, ack=ack))
        )
        if id(lane) not in self._busy:
            self._busy.add(id(lane))
            self._acks_settled.clear()
            self.owner.spawn(self._forward(lane), "ack_forward")

    async def _forward(self, lane: list[tuple[EdgeConnection, AgentAck]]) -> None:
        retry_s = ACK_RETRY_FIRST_S
        try:
            while lane:
                batch = lane[:MAX_ACKS_PER_BATCH]
                try:
                    await self.acks([ack for _, ack in batch])
                except Unavailable as err:
                    # Neither a dispatcher nor the store took them. An agent sends each ack once, so
                    # they are kept and sent again (their sockets wait meanwhile: MAX_ACKS_IN_FLIGHT).
                    log.warning("%d acks not recorded, again in %.1f s: %s", len(batch), retry_s, err.message)
                    await asyncio.sleep(retry_s)
                    retry_s = min(retry_s * 2, ACK_RETRY_MAX_S)
                    continue
                except IkiroError as err:  # refused for what they are: sending again would not help
                    frame = codec.error_frame(err)
                    for conn in {id(conn): conn for conn, _ in batch}.values():
                        conn.send("error", frame)
                retry_s = ACK_RETRY_FIRST_S
                del lane[: len(batch)]
                for conn, _ in batch:
                    conn.acks_done(1)
        finally:
            self._busy.discard(id(lane))
            if not self._busy:
                self._acks_settled.set()

    async def acks_settled(self) -> None:
        """Until every ack taken from a socket has been applied or stored."""
        await self._acks_settled.wait()

    async def acks(self, acks: list[AgentAck]) -> None:
        """Hand acks to the dispatchers owning their agents' partitions, one request per owner (to
        any dispatcher, which passes them on, while the owners are not known); those no dispatcher
        applies in time, or could not apply, are stored in JetStream for one to apply later
        (applying an ack twice changes nothing)."""
        live = self.dispatchers.live
        if len(live) <= 1:
            await self._hand_over(subjects.ACKS_SUBMIT, acks)
            return
        by_owner: dict[str | None, tuple[int, list[AgentAck]]] = {}
        for ack in acks:
            partition = subjects.partition_of(ack.edge_agent_id)
            owner = subjects.owner_of(partition, live)
            by_owner.setdefault(owner, (partition, []))[1].append(ack)
        await asyncio.gather(
            *(
                self._hand_over(subjects.partition_api(partition, "acks"), group)
                for partition, group in by_owner.values()
            )
        )

    async def _hand_over(self, subject: str, acks: list[AgentAck]) -> None:
        body = codec.dumps(AckBatch(acks=acks))
        try:
            await request(self.nc, subject, body, min(self.timeout_s, DISPATCHER_ACK_WAIT_S))
        except IkiroError as err:
            if err.code not in (ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL_ERROR):
                raise
            try:
                await self.js.publish(subjects.ACKS_STORED, body, timeout=self.timeout_s)
            except NATS_ERRORS as err:
                raise Unavailable("acks could not be recorded, send them again") from err

    async def pull(self, edge_agent_id: str, connection_id: str, via_socket: bool) -> list[dict[str, Any]]:
        """The commands due for this connection, in push order, marked sent to it."""
        body = PullRequest(edge_agent_id=edge_agent_id, connection_id=connection_id, via_socket=via_socket)
        subject = subjects.partition_api(subjects.partition_of(edge_agent_id), "pull")
        reply = await request_owner(self.nc, subject, codec.dumps(body), self.timeout_s)
        commands: list[dict[str, Any]] = reply["commands"]
        return commands

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

    # --- presence, fenced by revision ---

    async def claim(self, edge_agent_id: str, connection_id: str) -> int:
        """Make `connection_id` the agent's live socket; returns its epoch (higher = newer)."""
        now = codec.utcnow()
        record = AgentPresence(
            edge_agent_id=edge_agent_id,
            online=True,
            connection_id=connection_id,
            connected_at=now,
            gateway_id=self.gateway_id,
        )
        epoch = await self.agents.put(subjects.agent_key("presence", edge_agent_id), codec.dumps(record))
        await self._announce(edge_agent_id, "connected", connection_id, epoch)
        return epoch

    async def reassert(self, conn: EdgeConnection) -> int | None:
        """After this gateway was cut off from NATS, a dispatcher that found nobody answering for the
        socket may have marked the agent offline: mark it online again, unless another socket has
        claimed it since. The socket's epoch now, or None when it has been replaced."""
        key = subjects.agent_key("presence", conn.edge_agent_id)
        found = await self.agents.get(key, PRESENCE, fresh=True)
        if found is not None and found[0].connection_id != conn.connection_id:
            return None
        if found is not None and found[0].online:
            return found[1]
        back = AgentPresence(
            edge_agent_id=conn.edge_agent_id,
            online=True,
            connection_id=conn.connection_id,
            connected_at=conn.connected_at,
            gateway_id=self.gateway_id,
        )
        try:
            return await self.agents.write(key, codec.dumps(back), found[1] if found else 0)
        except WrongRevision:
            return None  # claimed by a newer socket meanwhile

    async def release(
        self, edge_agent_id: str, connection_id: str, epoch: int, connected_at: datetime
    ) -> None:
        """Mark the agent offline, unless a newer socket has claimed it since (then say nothing)."""
        record = AgentPresence(
            edge_agent_id=edge_agent_id,
            online=False,
            connection_id=connection_id,
            connected_at=connected_at,
            disconnected_at=codec.utcnow(),
            gateway_id=self.gateway_id,
        )
        try:
            await self.agents.write(subjects.agent_key("presence", edge_agent_id), codec.dumps(record), epoch)
        except WrongRevision:
            return
        await self._announce(edge_agent_id, "disconnected", connection_id, epoch)

    async def _announce(
        self, edge_agent_id: str, event: Literal["connected", "disconnected"], connection_id: str, epoch: int
    ) -> None:
        body = PresenceEvent(
            edge_agent_id=edge_agent_id,
            event=event,
            connection_id=connection_id,
            epoch=epoch,
            at=codec.now_iso(),
        )
        await self.nc.publish(subjects.presence(edge_agent_id), codec.dumps(body))
