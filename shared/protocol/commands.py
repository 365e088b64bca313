"""The command dispatcher's internal API (DESIGN section 4): requests, per-type payload rules, the
command record and its lifecycle events. The rules that move a record live with the dispatcher
(`services/command_dispatcher/lifecycle.py`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from shared.protocol.edge import AgentId, CommandAck, CommandType, Priority
from shared.protocol.errors import InvalidPayload, describe, refusal

MAX_TTL_S = 604800
MAX_ACKS_PER_BATCH = 1000
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


class AgentCommandsRequest(BaseModel):
    """`edge.agents.commands`: an agent's unfinished commands, in delivery order."""

    edge_agent_id: AgentId
    limit: StrictInt = Field(default=100, ge=1, le=1000)


class PurgeRequest(BaseModel):
    """`edge.agents.purge`: cancel an agent's `queued` and `sent` commands."""

    edge_agent_id: AgentId
    reason: str | None = Field(default=None, max_length=200)


class PullRequest(BaseModel):
    """Gateway -> dispatcher: hand over what is due for this connection, marking it sent."""

    edge_agent_id: AgentId
    connection_id: str
    # A socket takes back commands sent to an older connection at once; a sync poll only when due.
    via_socket: bool = True


class AgentAck(BaseModel):
    """One agent's ack as a gateway forwards it."""

    edge_agent_id: AgentId
    connection_id: str
    ack: CommandAck


class AckBatch(BaseModel):
    """Gateway -> dispatcher on `edge.acks.submit`: acks of any agents, each agent's in its order."""

    acks: list[AgentAck] = Field(max_length=MAX_ACKS_PER_BATCH)


def parse_request(adapter: TypeAdapter[M], data: bytes) -> M:
    """Validate an internal request body, mapping any failure to `invalid_request`."""
    try:
        return adapter.validate_json(data)
    except ValidationError as err:
        raise refusal(err) from None


SUBMIT_REQUEST = TypeAdapter(SubmitRequest)
COMMAND_ID_REQUEST = TypeAdapter(CommandIdRequest)
AGENT_REQUEST = TypeAdapter(AgentRequest)
PULL_REQUEST = TypeAdapter(PullRequest)
AGENT_COMMANDS_REQUEST = TypeAdapter(AgentCommandsRequest)
PURGE_REQUEST = TypeAdapter(PurgeRequest)
ACK_BATCH = TypeAdapter(AckBatch)

# --- The record and its events ---------------------------------------------------------


class HistoryEntry(BaseModel):
    state: CommandState
    at: str


class CommandRecord(BaseModel):
    """A command as `edge.commands.get` and `edge.commands.cancel` answer it."""

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
    sent_at: datetime | None = None
    acked_at: datetime | None = None
    completed_at: datetime | None = None


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
