"""The dispatcher's internal NATS API (DESIGN section 4).

Any replica answers the public subjects (one queue group); everything about one agent is then
handled by the owner of the agent's partition, on `edge.partition.<p>.<op>`: here when this replica
owns it, else forwarded there. `OPS` binds each operation to its request model and handler: bodies
are parsed in one place (`serve`), and handlers take the parsed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from pydantic import TypeAdapter

from shared.broker.connection import Handler, request, request_owner
from shared.broker.kv import Bucket
from shared.protocol import codec, subjects
from shared.protocol.agents import STATUS, SYNC, AgentInfo, deliver_request
from shared.protocol.commands import (
    ACK_BATCH,
    AGENT_COMMANDS_REQUEST,
    AGENT_REQUEST,
    COMMAND_ID_REQUEST,
    PULL_REQUEST,
    PURGE_REQUEST,
    SUBMIT_REQUEST,
    AckBatch,
    AgentAck,
    AgentCommandsRequest,
    AgentRequest,
    CommandIdRequest,
    CommandState,
    PullRequest,
    PurgeRequest,
    SubmitRequest,
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
from .lifecycle import CANCELLABLE, AckOutcome, apply_ack, new_record, pull_order, same_content
from .metrics import DispatcherMetrics
from .ownership import Ownership
from .records import Record, command_data
from .store import CommandStore
from .view import View

log = logging.getLogger(__name__)

Op = tuple[TypeAdapter[Any], Callable[[Any], Awaitable[dict[str, Any]]]]


class Handlers:
    def __init__(
        self,
        nc: NATS,
        store: CommandStore,
        view: View,
        agents: Bucket,
        delivery: Delivery,
        ownership: Ownership,
        metrics: DispatcherMetrics,
        max_queued_per_agent: int,
        spawn: Spawn,
    ) -> None:
        self.nc = nc
        self.store = store
        self.view = view
        self.agents = agents
        self.delivery = delivery
        self.ownership = ownership
        self.metrics = metrics
        self.max_queued_per_agent = max_queued_per_agent
        self.spawn = spawn  # runs work that goes on after the reply (the first push, an offline mark)
        self.ops: dict[str, Op] = {
            "submit": (SUBMIT_REQUEST, self.handle_submit),
            "cancel": (COMMAND_ID_REQUEST, self.handle_cancel),
            "agent": (AGENT_REQUEST, self.handle_agents_get),
            "commands": (AGENT_COMMANDS_REQUEST, self.handle_agent_commands),
            "purge": (PURGE_REQUEST, self.handle_purge),
            "pull": (PULL_REQUEST, self.handle_pull),
            "acks": (ACK_BATCH, self.handle_acks),
        }
        assert set(self.ops) == set(subjects.PARTITION_OPS)

    # --- routing ---

    def routes(self) -> dict[str, Handler]:
        """The public subjects, answered by any replica."""
        return {
            subjects.COMMANDS_SUBMIT: self._by_agent("submit"),
            subjects.COMMANDS_GET: self.handle_get,
            subjects.COMMANDS_CANCEL: self.route_cancel,
            subjects.AGENTS_GET: self._by_agent("agent"),
            subjects.AGENTS_COMMANDS: self._by_agent("commands"),
            subjects.AGENTS_PURGE: self._by_agent("purge"),
            subjects.AGENTS_PULL: self._by_agent("pull"),
            subjects.ACKS_SUBMIT: self.route_acks,
        }

    def partition_routes(self, partition: int) -> dict[str, Handler]:
        """The subjects of one partition, answered by its owner only."""

        def serving(op: str) -> Handler:
            async def handle(data: bytes) -> dict[str, Any]:
                return await self.serve(partition, op, data)

            return handle

        return {subjects.partition_api(partition, op): serving(op) for op in self.ops}

    async def serve(self, partition: int, op: str, data: bytes) -> dict[str, Any]:
        """Handle a request of a partition this replica owns (handed over by another replica)."""
        if not self.ownership.active(partition):
            raise Unavailable("this replica no longer owns that agent's commands, try again")
        adapter, handler = self.ops[op]
        return await handler(self._parse(op, adapter, data))

    def _parse(self, op: str, adapter: TypeAdapter[Any], data: bytes) -> Any:
        try:
            return parse_request(adapter, data)
        except IkiroError as err:
            if op == "submit":
                self.metrics.submitted.labels(command_type=_type_label(data), result=str(err.code)).inc()
            raise

    async def route(self, partition: int, op: str, data: bytes, req: Any = None) -> dict[str, Any]:
        """Handle here when this replica owns the partition (`req`: `data` parsed already), else hand
        it to the owner."""
        if self.ownership.active(partition):
            adapter, handler = self.ops[op]
            return await handler(req if req is not None else self._parse(op, adapter, data))
        return await request_owner(self.nc, subjects.partition_api(partition, op), data)

    def _by_agent(self, op: str) -> Handler:
        adapter = self.ops[op][0]

        async def handle(data: bytes) -> dict[str, Any]:
            agent = None if len(self.ownership.held) == subjects.PARTITIONS else _agent_of(data)
            if agent is None:  # this replica owns every agent, or the request is unusable
                req = self._parse(op, adapter, data)
                return await self.route(subjects.partition_of(req.edge_agent_id), op, data, req)
            # Most likely another replica's: only the agent is read here, the owner parses the rest.
            return await self.route(subjects.partition_of(agent), op, data)

        return handle

    async def route_cancel(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)
        record = await self.store.read(str(req.command_id))
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return await self.route(subjects.partition_of(record.edge_agent_id), "cancel", data)

    async def route_acks(self, data: bytes) -> dict[str, Any]:
        """Acks of any agents: those of this replica's partitions applied here, the others handed to
        their owners, one request per owner (a batch spans many partitions)."""
        batch = parse_request(ACK_BATCH, data)
        mine: list[AgentAck] = []
        by_owner: dict[str | None, dict[int, list[AgentAck]]] = {}
        for item in batch.acks:
            partition = subjects.partition_of(item.edge_agent_id)
            if self.ownership.active(partition):
                mine.append(item)
            else:
                owner = self.ownership.owner_of(partition)
                by_owner.setdefault(owner, {}).setdefault(partition, []).append(item)
        if not by_owner:
            return await self.handle_acks(batch)  # all of them this replica's: the usual case of one
        await asyncio.gather(
            *([self.handle_acks(AckBatch.model_construct(acks=mine))] if mine else []),
            *(self._hand_acks(partitions) for partitions in by_owner.values()),
        )
        return {}

    async def _hand_acks(self, partitions: dict[int, list[AgentAck]]) -> None:
        """Acks of partitions one other replica owns, to it in one request (on the subject of one of
        them: the owner applies them all); partition by partition if it no longer owns that one."""
        first = next(iter(partitions))
        acks = [item for group in partitions.values() for item in group]
        try:
            await request_owner(
                self.nc, subjects.partition_api(first, "acks"), codec.dumps(AckBatch(acks=acks))
            )
        except Unavailable:
            if len(partitions) == 1:
                raise
            await asyncio.gather(
                *(
                    self.route(partition, "acks", codec.dumps(AckBatch(acks=group)))
                    for partition, group in partitions.items()
                )
            )

    # --- handlers ---

    async def handle_submit(self, req: SubmitRequest) -> dict[str, Any]:
        """Store the command durably, answer, then push it at once if the agent has a socket."""
        try:
            validate_payload(req.command_type, req.payload)
        except IkiroError as err:
            self.metrics.submitted.labels(command_type=req.command_type.value, result=str(err.code)).inc()
            raise
        command_type = req.command_type.value
        command_id = str(req.command_id or uuid.uuid4())
        full = self.view.count(req.edge_agent_id) >= self.max_queued_per_agent
        if full and req.command_id is None:
            self.metrics.submitted.labels(command_type=command_type, result="queue_full").inc()
            raise QueueFull(f"agent has {self.max_queued_per_agent} unfinished commands")
        if full:
            existing = await self.store.read(command_id)
            if existing is None:
                self.metrics.submitted.labels(command_type=command_type, result="queue_full").inc()
                raise QueueFull(f"agent has {self.max_queued_per_agent} unfinished commands")
        else:
            record = new_record(req, command_id, time.time(), self.view.link(req.edge_agent_id))
            existing = await self.store.create(record)
            if existing is None:
                self.metrics.submitted.labels(command_type=command_type, result="accepted").inc()
                if record.state is CommandState.SENT:
                    self.spawn(self.delivery.push(record))
                # Accepted `queued`; the push to a connected agent (its `sent` event) follows at once.
                return {"command_id": command_id, "state": CommandState.QUEUED.value, "duplicate": False}
        if not same_content(existing, req):
            self.metrics.submitted.labels(command_type=command_type, result="conflict").inc()
            raise Conflict(f"command {command_id} was already submitted with other content")
        self.metrics.submitted.labels(command_type=command_type, result="duplicate").inc()
        return {"command_id": command_id, "state": existing.state.value, "duplicate": True}

    async def handle_get(self, data: bytes) -> dict[str, Any]:
        req = parse_request(COMMAND_ID_REQUEST, data)
        record = await self.store.read(str(req.command_id))
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return record.public()

    async def handle_cancel(self, req: CommandIdRequest) -> dict[str, Any]:
        def change(current: Record) -> Record | None:
            if current.state not in CANCELLABLE:
                raise NotCancellable(f"command is {current.state}")
            return current.moved(CommandState.CANCELLED, time.time())

        record = await self.store.transition(str(req.command_id), change)
        if record is None:
            raise NotFound(f"no command {req.command_id}")
        return record.public()

    async def handle_agents_get(self, req: AgentRequest) -> dict[str, Any]:
        agent = req.edge_agent_id
        found = self.view.presence.get(agent)
        presence = found.presence if found else None
        status_read, sync_read = await asyncio.gather(
            self.agents.get(subjects.agent_key("status", agent), STATUS),
            self.agents.get(subjects.agent_key("sync", agent), SYNC),
        )
        status = status_read[0] if status_read else None
        sync = sync_read[0] if sync_read else None
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

    async def handle_agent_commands(self, req: AgentCommandsRequest) -> dict[str, Any]:
        """The agent's unfinished commands as records, in the order they would be delivered."""
        waiting = sorted(self.view.unfinished(req.edge_agent_id), key=pull_order)
        return {"commands": [r.public() for r in waiting[: req.limit]], "total": len(waiting)}

    async def handle_purge(self, req: PurgeRequest) -> dict[str, Any]:
        """Cancel the agent's `queued` and `sent` commands; those it is executing are left alone."""
        error = f"purged: {req.reason}" if req.reason else "purged"

        def change(current: Record) -> Record | None:
            if current.state not in CANCELLABLE:
                return None
            return current.moved(CommandState.CANCELLED, time.time(), error=error)

        waiting = self.view.unfinished(req.edge_agent_id)
        cancellable = [r.command_id for r in waiting if r.state in CANCELLABLE]
        done = await asyncio.gather(*(self.store.transition(cid, change) for cid in cancellable))
        cancelled = sum(1 for record in done if record is not None)
        log.info(
            "agent purged: %d cancelled",
            cancelled,
            extra={"edge_agent_id": req.edge_agent_id, "reason": req.reason},
        )
        return {"cancelled": cancelled, "left": self.view.count(req.edge_agent_id)}

    async def handle_pull(self, req: PullRequest) -> dict[str, Any]:
        sent = await self.delivery.pull(req.edge_agent_id, req.connection_id, req.via_socket)
        return {"commands": [command_data(record) for record in sent]}

    async def handle_acks(self, batch: AckBatch) -> dict[str, Any]:
        """Acks of a partition's agents: each command's acks applied in their order, in one
        compare-and-set."""
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


def _agent_of(data: bytes) -> str | None:
    """The request's `edge_agent_id` when it is a usable one, read without validating the rest."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    agent = body.get("edge_agent_id") if isinstance(body, dict) else None
    return agent if subjects.is_token(agent) else None


def _type_label(data: bytes) -> str:
    """A bounded label for a refused submission: the type when it is a known one."""
    try:
        body = codec.loads(data)
        value = body.get("command_type") if isinstance(body, dict) else None
    except ValueError:
        value = None
    return value if isinstance(value, str) and value in CommandType._value2member_map_ else "invalid"
