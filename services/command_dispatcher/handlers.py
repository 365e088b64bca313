"""The dispatcher's internal NATS API (DESIGN section 4), one `handle_<name>` per subject."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from shared.broker.connection import Handler, request
from shared.broker.kv import Bucket
from shared.protocol import codec, subjects
from shared.protocol.agents import PRESENCE, STATUS, SYNC, AgentInfo, DeliverRequest
from shared.protocol.commands import (
    ACK_REQUEST,
    AGENT_REQUEST,
    COMMAND_ID_REQUEST,
    PULL_REQUEST,
    SUBMIT_REQUEST,
    TERMINAL,
    CommandRecord,
    CommandState,
    parse_request,
    validate_payload,
)
from shared.protocol.edge import CommandType
from shared.protocol.errors import Conflict, IkiroError, NoResponders, NotCancellable, NotFound, QueueFull

from .delivery import Delivery
from .lifecycle import CANCELLABLE, AckOutcome, apply_ack, moved, new_record, same_content
from .metrics import DispatcherMetrics
from .store import CommandStore

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0


class Handlers:
    def __init__(
        self,
        store: CommandStore,
        delivery: Delivery,
        agents: Bucket,
        metrics: DispatcherMetrics,
        max_queued_per_agent: int,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.agents = agents
        self.metrics = metrics
        self.max_queued_per_agent = max_queued_per_agent

    def routes(self) -> dict[str, Handler]:
        return {
            subjects.COMMANDS_SUBMIT: self.handle_submit,
            subjects.COMMANDS_GET: self.handle_get,
            subjects.COMMANDS_CANCEL: self.handle_cancel,
            subjects.AGENTS_GET: self.handle_agents_get,
            subjects.AGENTS_PULL: self.handle_pull,
            subjects.ACKS_SUBMIT: self.handle_ack,
        }

    async def handle_submit(self, data: bytes) -> dict[str, Any]:
        try:
            req = parse_request(SUBMIT_REQUEST, data)
            validate_payload(req.command_type, req.payload)
        except IkiroError as err:
            self.metrics.submitted.labels(command_type=_type_label(data), result=str(err.code)).inc()
            raise
        command_type = str(req.command_type)
        command_id = req.command_id or uuid.uuid4()
        active = await self.store.active_command_ids(req.edge_agent_id)
        existing = None
        if len(active) >= self.max_queued_per_agent:
            existing = await self.store.get(command_id) if req.command_id else None
            if existing is None:
                self.metrics.submitted.labels(command_type=command_type, result="queue_full").inc()
                raise QueueFull(f"agent has {self.max_queued_per_agent} unfinished commands")
        else:
            record = new_record(req, command_id, codec.utcnow())
            if await self.store.create(record):
                self.metrics.submitted.labels(command_type=command_type, result="accepted").inc()
                return {"command_id": str(command_id), "state": record.state, "duplicate": False}
            existing = await self.store.get(command_id)
        if existing is None:  # created and then gone: only retention removes records
            raise NotFound(f"command {command_id} is no longer kept")
        current = existing[0]
        if not same_content(current, req):
            self.metrics.submitted.labels(command_type=command_type, result="conflict").inc()
            raise Conflict(f"command {command_id} was already submitted with other content")
        if current.state not in TERMINAL:
            # A submitter retrying after a crash between the write and its timer: re-arm it.
            await self.store.arm_timer(current)
        self.metrics.submitted.labels(command_type=command_type, result="duplicate").inc()
        return {"command_id": str(command_id), "state": current.state, "duplicate": True}

    async def handle_get(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)
        got = await self.store.get(req.command_id)
        if got is None:
            raise NotFound(f"no command {req.command_id}")
        return got[0].public()

    async def handle_cancel(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)

        def change(current: CommandRecord) -> CommandRecord | None:
            if current.state not in CANCELLABLE:
                raise NotCancellable(f"command is {current.state}")
            return moved(current, CommandState.CANCELLED, codec.utcnow())

        record = await self.store.transition(req.command_id, change)
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return record.public()

    async def handle_agents_get(self, data: bytes) -> dict[str, Any]:
        req = parse_request(AGENT_REQUEST, data)
        agent = req.edge_agent_id
        presence_found, status, sync, active = await asyncio.gather(
            self.agents.get(subjects.agent_key("presence", agent), PRESENCE),
            self.agents.get(subjects.agent_key("status", agent), STATUS),
            self.agents.get(subjects.agent_key("sync", agent), SYNC),
            self.store.active_command_ids(agent),
        )
        presence = presence_found[0] if presence_found else None
        online = False
        last_seen = None
        if presence is not None and presence.online and presence.connection_id:
            try:
                reply = await request(
                    self.delivery.nc,
                    subjects.deliver(agent),
                    DeliverRequest(connection_id=presence.connection_id).model_dump(mode="json"),
                    PROBE_TIMEOUT_S,
                )
                online = True
                last_seen = reply.get("last_seen")
            except NoResponders:
                assert presence_found is not None
                await self.delivery.mark_offline(presence, presence_found[1])
            except IkiroError:
                pass  # a gateway too busy to answer the probe in time: not proof the agent is gone
        status_rec = status[0] if status else None
        sync_rec = sync[0] if sync else None
        seen = [
            t
            for t in (
                presence.disconnected_at if presence else None,
                presence.connected_at if presence else None,
                status_rec.at if status_rec else None,
                sync_rec.at if sync_rec else None,
            )
            if t is not None
        ]
        if last_seen is None and seen:
            last_seen = codec.iso(max(seen))
        # No registry of agents exists: an id never seen is simply an agent that is offline.
        info = AgentInfo(
            edge_agent_id=agent,
            online=online,
            connected_at=codec.iso(presence.connected_at) if presence and presence.connected_at else None,
            last_seen=last_seen,
            last_status=status_rec.status if status_rec else None,
            last_command_id=sync_rec.last_command_id if sync_rec else None,
            queued=len(active),
        )
        return info.model_dump(mode="json")

    async def handle_pull(self, data: bytes) -> dict[str, Any]:
        req = parse_request(PULL_REQUEST, data)
        commands = await self.delivery.pull(req.edge_agent_id, req.connection_id, req.via_socket)
        return {"commands": [c.model_dump(mode="json") for c in commands]}

    async def handle_ack(self, data: bytes) -> dict[str, Any]:
        req = parse_request(ACK_REQUEST, data)
        outcome = AckOutcome.UNKNOWN

        def change(current: CommandRecord) -> CommandRecord | None:
            nonlocal outcome
            new, outcome = apply_ack(current, req.edge_agent_id, req.ack, codec.utcnow())
            return new

        await self.store.transition(req.ack.command_id, change)
        self.metrics.acks.labels(outcome=outcome).inc()
        if outcome is not AckOutcome.APPLIED:
            log.info(
                "ack changed nothing: %s",
                outcome,
                extra={"command_id": str(req.ack.command_id), "edge_agent_id": req.edge_agent_id},
            )
        return {"outcome": outcome}


def _type_label(data: bytes) -> str:
    """A bounded label for a refused submission: the type when it is a known one."""
    try:
        body = codec.loads(data)
        value = body.get("command_type") if isinstance(body, dict) else None
    except ValueError:
        value = None
    return str(value) if value in CommandType._value2member_map_ else "invalid"
