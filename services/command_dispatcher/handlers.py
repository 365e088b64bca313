"""The dispatcher's internal NATS API (DESIGN section 4), one `handle_<name>` per subject."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from nats.aio.client import Client as NATS

from shared.broker.connection import Handler, request
from shared.protocol import codec, subjects
from shared.protocol.agents import AgentInfo, deliver_request
from shared.protocol.commands import (
    ACK_BATCH,
    AGENT_REQUEST,
    COMMAND_ID_REQUEST,
    PULL_REQUEST,
    SUBMIT_REQUEST,
    AgentAck,
    CommandState,
    parse_request,
    validate_payload,
)
from shared.protocol.edge import CommandType
from shared.protocol.errors import (
    Conflict,
    IkiroError,
    NoResponders,
    NotCancellable,
    NotFound,
    QueueFull,
    Unavailable,
)

from .delivery import PROBE_TIMEOUT_S, Delivery, Spawn
from .lifecycle import CANCELLABLE, AckOutcome, apply_ack, new_record, same_content
from .metrics import DispatcherMetrics
from .records import Record, command_data
from .store import CommandStore
from .view import View

log = logging.getLogger(__name__)

TAKEN_READ_RETRIES_S = (0.05, 0.25, 1.0)


class Handlers:
    def __init__(
        self,
        nc: NATS,
        store: CommandStore,
        view: View,
        delivery: Delivery,
        metrics: DispatcherMetrics,
        max_queued_per_agent: int,
        spawn: Spawn,
    ) -> None:
        self.nc = nc
        self.store = store
        self.view = view
        self.delivery = delivery
        self.metrics = metrics
        self.max_queued_per_agent = max_queued_per_agent
        self.spawn = spawn  # runs work that goes on after the reply (the first push, an offline mark)

    def routes(self) -> dict[str, Handler]:
        return {
            subjects.COMMANDS_SUBMIT: self.handle_submit,
            subjects.COMMANDS_GET: self.handle_get,
            subjects.COMMANDS_CANCEL: self.handle_cancel,
            subjects.AGENTS_GET: self.handle_agents_get,
            subjects.AGENTS_PULL: self.handle_pull,
            subjects.ACKS_SUBMIT: self.handle_acks,
        }

    async def handle_submit(self, data: bytes) -> dict[str, Any]:
        """Store the command durably, answer, then push it at once if the agent has a socket."""
        try:
            req = parse_request(SUBMIT_REQUEST, data)
            validate_payload(req.command_type, req.payload)
        except IkiroError as err:
            self.metrics.submitted.labels(command_type=_type_label(data), result=str(err.code)).inc()
            raise
        command_type = req.command_type.value
        command_id = str(req.command_id or uuid.uuid4())
        if self.view.count(req.edge_agent_id) < self.max_queued_per_agent:
            record = new_record(req, command_id, time.time(), self.view.link(req.edge_agent_id))
            if await self.store.create(record):
                self.metrics.submitted.labels(command_type=command_type, result="accepted").inc()
                if record.state is CommandState.SENT:
                    self.spawn(self.delivery.push(record))
                # Accepted `queued`; the push to a connected agent (its `sent` event) follows at once.
                return {"command_id": command_id, "state": CommandState.QUEUED.value, "duplicate": False}
        elif req.command_id is None:
            self.metrics.submitted.labels(command_type=command_type, result="queue_full").inc()
            raise QueueFull(f"agent has {self.max_queued_per_agent} unfinished commands")
        existing = await self.store.read(command_id)
        if existing is None:
            if self.view.count(req.edge_agent_id) >= self.max_queued_per_agent:
                self.metrics.submitted.labels(command_type=command_type, result="queue_full").inc()
                raise QueueFull(f"agent has {self.max_queued_per_agent} unfinished commands")
            existing = await self._read_taken(command_id)
        if not same_content(existing, req):
            self.metrics.submitted.labels(command_type=command_type, result="conflict").inc()
            raise Conflict(f"command {command_id} was already submitted with other content")
        self.metrics.submitted.labels(command_type=command_type, result="duplicate").inc()
        return {"command_id": command_id, "state": existing.state.value, "duplicate": True}

    async def _read_taken(self, command_id: str) -> Record:
        """The record whose `create` just refused this id. Not finding it is no proof it is absent:
        in a cluster the read may reach a store that has not caught up yet (a leader change). A
        caller told `not_found` would submit under a new id and the message would go out twice, so
        ask again and, failing that, answer `unavailable`: the caller retries with the same id."""
        for delay_s in TAKEN_READ_RETRIES_S:
            await asyncio.sleep(delay_s)
            existing = await self.store.read(command_id)
            if existing is not None:
                return existing
        raise Unavailable(f"command {command_id} is being stored; submit it again with the same id")

    async def handle_get(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)
        record = await self.store.read(str(req.command_id))
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return record.public()

    async def handle_cancel(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)

        def change(current: Record) -> Record | None:
            if current.state not in CANCELLABLE:
                raise NotCancellable(f"command is {current.state}")
            return current.moved(CommandState.CANCELLED, time.time())

        record = await self.store.transition(str(req.command_id), change)
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return record.public()

    async def handle_agents_get(self, data: bytes) -> dict[str, Any]:
        agent = parse_request(AGENT_REQUEST, data).edge_agent_id
        found = self.view.presence.get(agent)
        presence = found[0] if found else None
        status = self.view.status.get(agent)
        sync = self.view.sync.get(agent)
        online = False
        last_seen = None
        if presence is not None and presence.online and presence.connection_id and presence.gateway_id:
            try:
                reply = await request(
                    self.nc,
                    subjects.deliver(presence.gateway_id),
                    deliver_request(presence.connection_id),
                    PROBE_TIMEOUT_S,
                )
                online = True
                last_seen = reply.get("last_seen")
            except NoResponders:
                self.spawn(self.delivery.mark_offline(agent, presence.connection_id))
            except IkiroError:
                pass  # a gateway too busy to answer the probe in time: not proof the agent is gone
        seen = [
            t
            for t in (
                presence.disconnected_at if presence else None,
                presence.connected_at if presence else None,
                status.at if status else None,
                sync.at if sync else None,
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
            last_status=status.status if status else None,
            last_command_id=sync.last_command_id if sync else None,
            queued=self.view.count(agent),
        )
        return info.model_dump(mode="json")

    async def handle_pull(self, data: bytes) -> dict[str, Any]:
        req = parse_request(PULL_REQUEST, data)
        sent = await self.delivery.pull(req.edge_agent_id, req.connection_id, req.via_socket)
        return {"commands": [command_data(record) for record in sent]}

    async def handle_acks(self, data: bytes) -> dict[str, Any]:
        """Acks of any agents: each command's acks applied in their order, in one compare-and-set."""
        batch = parse_request(ACK_BATCH, data)
        by_command: dict[str, list[AgentAck]] = {}
        for item in batch.acks:
            by_command.setdefault(str(item.ack.command_id), []).append(item)
        await asyncio.gather(*(self._apply_acks(cid, acks) for cid, acks in by_command.items()))
        return {}

    async def _apply_acks(self, command_id: str, acks: list[AgentAck]) -> None:
        outcomes: list[AckOutcome] = []

        def change(current: Record) -> Record | None:
            outcomes.clear()
            record: Record | None = current
            moved = False
            now = time.time()  # acks that arrived together are applied at one moment
            for item in acks:
                new, outcome = apply_ack(record, item.edge_agent_id, item.ack, now)
                outcomes.append(outcome)
                if new is not None:
                    record, moved = new, True
            return record if moved else None

        if await self.store.transition(command_id, change) is None and not outcomes:
            outcomes = [AckOutcome.UNKNOWN] * len(acks)
        for item, outcome in zip(acks, outcomes, strict=True):
            self.metrics.acks(outcome).inc()
            if outcome is not AckOutcome.APPLIED:
                log.info(
                    "ack changed nothing: %s",
                    outcome,
                    extra={"command_id": command_id, "edge_agent_id": item.edge_agent_id},
                )


def _type_label(data: bytes) -> str:
    """A bounded label for a refused submission: the type when it is a known one."""
    try:
        body = codec.loads(data)
        value = body.get("command_type") if isinstance(body, dict) else None
    except ValueError:
        value = None
    return str(value) if value in CommandType._value2member_map_ else "invalid"
