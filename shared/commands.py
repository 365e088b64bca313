"""The command dispatcher's internal API models, per-type payload checks and the state machine.

Everything here is pure: no I/O, so the lifecycle rules are unit-tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from shared.edge_protocol import AckStatus, AgentId, CommandAck, CommandData, CommandType, Priority
from shared.errors import InvalidPayload, InvalidRequest
from shared.jsonutil import iso

MAX_TTL_S = 604800
M = TypeVar("M", bound=BaseModel)
DEFAULT_TTL_S = {Priority.NORMAL: 86400, Priority.IMMEDIATE: 120}


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    RECEIVED = "received"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL = frozenset(
    {CommandState.COMPLETED, CommandState.FAILED, CommandState.EXPIRED, CommandState.CANCELLED}
)
CANCELLABLE = frozenset({CommandState.QUEUED, CommandState.SENT})
UNACKED = frozenset({CommandState.QUEUED, CommandState.SENT})
# How far along a command is; an ack may only move it to a higher rank.
_RANK = {
    CommandState.QUEUED: 0,
    CommandState.SENT: 1,
    CommandState.RECEIVED: 2,
    CommandState.EXECUTING: 3,
    CommandState.COMPLETED: 4,
    CommandState.FAILED: 4,
    CommandState.EXPIRED: 4,
    CommandState.CANCELLED: 4,
}

# --- Payloads: extra fields allowed, required fields typed -------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class SendMessageNow(_Payload):
    thread_id: str
    text: str = Field(max_length=5000)
    bubble_type: Literal["reflex", "burst", "normal"] | None = None


def _iso_8601(value: Any) -> Any:
    # pydantic would also take unix seconds; the contract says an ISO-8601 string.
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 date-time string")
    return value


class ScheduleMessage(_Payload):
    thread_id: str
    message_text: str
    send_at: Annotated[datetime, BeforeValidator(_iso_8601)]
    is_group: bool | None = None


class SetRule(_Payload):
    rule_type: str
    rule_config: dict[str, Any]


class CancelScheduled(_Payload):
    schedule_id: str


class ContextUpdate(_Payload):
    chat_guid: str
    thread_id: str
    app_id: str
    room_id: str | None = None
    state: Literal["active", "completed"] | None = None
    metadata: dict[str, Any] | None = None
    notify_text: str | None = None


class ContextReset(_Payload):
    chat_guid: str
    thread_id: str
    reason: str | None = None
    notify_text: str | None = None


class UploadRetry(_Payload):
    attachment_guid: str
    chat_guid: str | None = None
    thread_id: str | None = None
    reason: str | None = None
    retry_count: int | None = None


class EmitEvent(_Payload):
    event_type: str
    chat_guid: str | None = None
    thread_id: str | None = None
    room_id: str | None = None
    event_data: dict[str, Any] | None = None


PAYLOAD_MODELS: dict[CommandType, type[_Payload]] = {
    CommandType.SEND_MESSAGE_NOW: SendMessageNow,
    CommandType.SCHEDULE_MESSAGE: ScheduleMessage,
    CommandType.SET_RULE: SetRule,
    CommandType.CANCEL_SCHEDULED: CancelScheduled,
    CommandType.CONTEXT_UPDATE: ContextUpdate,
    CommandType.CONTEXT_RESET: ContextReset,
    CommandType.UPLOAD_RETRY: UploadRetry,
    CommandType.EMIT_EVENT: EmitEvent,
}


def describe(err: ValidationError) -> str:
    """One readable line naming the first offending field."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def validate_payload(command_type: CommandType, payload: dict[str, Any]) -> None:
    """Raise `InvalidPayload` naming the field when `payload` does not fit `command_type`."""
    try:
        PAYLOAD_MODELS[command_type].model_validate(payload)
    except ValidationError as err:
        raise InvalidPayload(f"payload.{describe(err)}") from None


# --- Requests -----------------------------------------------------------------------------


class SubmitRequest(BaseModel):
    edge_agent_id: AgentId
    command_type: CommandType
    payload: dict[str, Any]
    command_id: UUID | None = None
    priority: Priority = Priority.NORMAL
    ttl_s: StrictInt | None = Field(default=None, ge=1, le=MAX_TTL_S)


class CommandIdRequest(BaseModel):
    command_id: UUID


class AgentRequest(BaseModel):
    edge_agent_id: AgentId


class PullRequest(BaseModel):
    """Gateway -> dispatcher: hand over what is due for this connection, marking it sent."""

    edge_agent_id: AgentId
    connection_id: str
    # A socket takes back commands sent to an older connection at once; a sync poll only when due.
    via_socket: bool = True


class AckRequest(BaseModel):
    edge_agent_id: AgentId
    connection_id: str
    ack: CommandAck


def parse_request(adapter: TypeAdapter[M], data: bytes) -> M:
    """Validate an internal request body, mapping any failure to `invalid_request`."""
    try:
        return adapter.validate_json(data)
    except ValidationError as err:
        raise InvalidRequest(describe(err)) from None


SUBMIT_REQUEST = TypeAdapter(SubmitRequest)
COMMAND_ID_REQUEST = TypeAdapter(CommandIdRequest)
AGENT_REQUEST = TypeAdapter(AgentRequest)
PULL_REQUEST = TypeAdapter(PullRequest)
ACK_REQUEST = TypeAdapter(AckRequest)

# --- The record and its state machine -----------------------------------------------------


class HistoryEntry(BaseModel):
    state: CommandState
    at: str


class CommandRecord(BaseModel):
    command_id: UUID
    edge_agent_id: str
    command_type: CommandType
    payload: dict[str, Any]
    priority: Priority
    ttl_s: int
    state: CommandState
    attempts: int = 0
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    history: list[HistoryEntry]
    # Bookkeeping the timers and the pull need.
    sent_at: datetime | None = None
    sent_to: str | None = None
    acked_at: datetime | None = None
    completed_at: datetime | None = None

    def same_content(self, req: SubmitRequest) -> bool:
        """Whether a re-submission under this id asks for exactly this command."""
        return (
            self.edge_agent_id == req.edge_agent_id
            and self.command_type == req.command_type
            and self.payload == req.payload
            and self.priority == req.priority
            and self.ttl_s == resolved_ttl(req)
        )

    def to_command_data(self) -> CommandData:
        return CommandData(
            command_id=self.command_id,
            command_type=self.command_type,
            payload=self.payload,
            priority=self.priority,
            timestamp=iso(self.created_at),
        )

    def public(self) -> dict[str, Any]:
        """The record as `edge.commands.get` answers it."""
        return self.model_dump(mode="json", exclude={"sent_to"})


RECORD = TypeAdapter(CommandRecord)


def resolved_ttl(req: SubmitRequest) -> int:
    return req.ttl_s if req.ttl_s is not None else DEFAULT_TTL_S[req.priority]


def new_record(req: SubmitRequest, command_id: UUID, now: datetime) -> CommandRecord:
    ttl = resolved_ttl(req)
    return CommandRecord(
        command_id=command_id,
        edge_agent_id=req.edge_agent_id,
        command_type=req.command_type,
        payload=req.payload,
        priority=req.priority,
        ttl_s=ttl,
        state=CommandState.QUEUED,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(seconds=ttl),
        history=[HistoryEntry(state=CommandState.QUEUED, at=iso(now))],
    )


def moved(record: CommandRecord, state: CommandState, now: datetime, **changes: Any) -> CommandRecord:
    """A copy of `record` in `state`, with its history extended."""
    return record.model_copy(
        update={
            "state": state,
            "updated_at": now,
            "history": [*record.history, HistoryEntry(state=state, at=iso(now))],
            **changes,
        }
    )


class AckOutcome(StrEnum):
    """What an ack did; the label of the ignored-acks counter."""

    APPLIED = "applied"
    TERMINAL = "terminal"
    BACKWARDS = "backwards"
    UNKNOWN = "unknown"
    FOREIGN = "foreign"


_ACK_STATE = {
    AckStatus.RECEIVED: CommandState.RECEIVED,
    AckStatus.EXECUTING: CommandState.EXECUTING,
    AckStatus.COMPLETED: CommandState.COMPLETED,
    AckStatus.FAILED: CommandState.FAILED,
}


def apply_ack(
    record: CommandRecord | None, edge_agent_id: str, ack: CommandAck, now: datetime
) -> tuple[CommandRecord | None, AckOutcome]:
    """The record after `ack`, or None with the reason it changes nothing. Never moves backwards."""
    if record is None:
        return None, AckOutcome.UNKNOWN
    if record.edge_agent_id != edge_agent_id:
        return None, AckOutcome.FOREIGN
    if record.state in TERMINAL:
        return None, AckOutcome.TERMINAL
    target = _ACK_STATE[ack.status]
    if _RANK[target] <= _RANK[record.state]:
        return None, AckOutcome.BACKWARDS
    changes: dict[str, Any] = {}
    if record.acked_at is None:
        changes["acked_at"] = now
    if target in TERMINAL:
        changes["completed_at"] = ack.completed_at or now
        if target is CommandState.FAILED:
            changes["error"] = ack.error or "failed"
    return moved(record, target, now, **changes), AckOutcome.APPLIED


@dataclass(frozen=True, slots=True)
class Timing:
    """The dispatcher's timer settings, in seconds."""

    ack_timeout_s: float = 10.0
    max_ack_timeout_s: float = 300.0
    max_attempts: int = 5
    execution_timeout_s: float = 1800.0

    def ack_wait(self, attempts: int) -> float:
        """How long a send waits for an ack: doubling with every attempt, capped."""
        return min(self.ack_timeout_s * 2.0 ** max(attempts - 1, 0), self.max_ack_timeout_s)


class TimerAction(StrEnum):
    DONE = "done"  # terminal: the timer has nothing left to do
    EXPIRE = "expire"
    DELIVER = "deliver"  # queued: send if the agent is online
    REDELIVER = "redeliver"  # sent, no ack in time, attempts left
    UNDELIVERED = "undelivered"  # sent, no ack in time, attempts used up
    EXECUTION_TIMEOUT = "execution_timeout"
    WAIT = "wait"


def timer_action(record: CommandRecord, now: datetime, timing: Timing) -> tuple[TimerAction, datetime | None]:
    """What a timer firing at `now` must do for `record`, and for WAIT when to look again."""
    state = record.state
    if state in TERMINAL:
        return TimerAction.DONE, None
    if state in UNACKED and now >= record.expires_at:
        return TimerAction.EXPIRE, None
    if state is CommandState.QUEUED:
        return TimerAction.DELIVER, record.expires_at
    if state is CommandState.SENT:
        assert record.sent_at is not None
        due = record.sent_at + timedelta(seconds=timing.ack_wait(record.attempts))
        if now < due:
            return TimerAction.WAIT, min(due, record.expires_at)
        if record.attempts >= timing.max_attempts:
            return TimerAction.UNDELIVERED, None
        return TimerAction.REDELIVER, record.expires_at
    assert record.acked_at is not None
    deadline = record.acked_at + timedelta(seconds=timing.execution_timeout_s)
    if now >= deadline:
        return TimerAction.EXECUTION_TIMEOUT, None
    return TimerAction.WAIT, deadline


def due_for_pull(
    record: CommandRecord, connection_id: str, via_socket: bool, now: datetime, timing: Timing
) -> bool:
    """Whether a connect or sync poll should be handed this command now."""
    if record.state is CommandState.QUEUED:
        return now < record.expires_at
    if record.state is not CommandState.SENT or now >= record.expires_at:
        return False
    if record.sent_to == connection_id or record.attempts >= timing.max_attempts:
        return False
    if via_socket:
        # The earlier send went to a socket that is gone: the new one gets it at once.
        return True
    assert record.sent_at is not None
    return now >= record.sent_at + timedelta(seconds=timing.ack_wait(record.attempts))


def pull_order(record: CommandRecord) -> tuple[int, datetime]:
    """`immediate` before `normal`, submission order within a priority."""
    return (0 if record.priority is Priority.IMMEDIATE else 1, record.created_at)


class LifecycleEvent(BaseModel):
    command_id: UUID
    edge_agent_id: str
    command_type: CommandType
    state: CommandState
    previous_state: CommandState | None
    attempt: int
    error: str | None
    at: str


LIFECYCLE_EVENT = TypeAdapter(LifecycleEvent)


def lifecycle_event(record: CommandRecord, previous: CommandState | None) -> LifecycleEvent:
    return LifecycleEvent(
        command_id=record.command_id,
        edge_agent_id=record.edge_agent_id,
        command_type=record.command_type,
        state=record.state,
        previous_state=previous,
        attempt=record.attempts,
        error=record.error,
        at=iso(record.updated_at),
    )
