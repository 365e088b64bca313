"""Wire models of the edge WebSocket protocol and of `POST /edge/sync` (DESIGN section 3)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.protocol.subjects import TOKEN_RE

AgentId = Annotated[str, Field(pattern=TOKEN_RE.pattern)]

MAX_FRAME_BYTES = 256 * 1024
MAX_STATUS_BYTES = 16 * 1024
MAX_SYNC_BODY_BYTES = 1024 * 1024


class CommandType(StrEnum):
    SEND_MESSAGE_NOW = "send_message_now"
    SCHEDULE_MESSAGE = "schedule_message"
    SET_RULE = "set_rule"
    CANCEL_SCHEDULED = "cancel_scheduled"
    CONTEXT_UPDATE = "context_update"
    CONTEXT_RESET = "context_reset"
    UPLOAD_RETRY = "upload_retry"
    EMIT_EVENT = "emit_event"


class Priority(StrEnum):
    IMMEDIATE = "immediate"
    NORMAL = "normal"


class AckStatus(StrEnum):
    RECEIVED = "received"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"


class CommandData(BaseModel):
    """A command as pushed to an agent (socket `command` frame and sync response)."""

    command_id: UUID
    command_type: CommandType
    payload: dict[str, Any]
    priority: Priority
    timestamp: str


class CommandAck(BaseModel):
    """`command_ack` data: what an agent says it did with a command."""

    model_config = ConfigDict(extra="ignore")

    command_id: UUID
    status: AckStatus
    error: str | None = None
    completed_at: datetime | None = None


# --- Edge -> backend frames: one discriminated union, parsed in one pass ---


class PingFrame(BaseModel):
    type: Literal["ping"]
    data: dict[str, Any] = Field(default_factory=dict)


class CommandAckFrame(BaseModel):
    type: Literal["command_ack"]
    data: CommandAck


class StatusFrame(BaseModel):
    type: Literal["status"]
    data: dict[str, Any]


EdgeInbound = Annotated[PingFrame | CommandAckFrame | StatusFrame, Field(discriminator="type")]
EDGE_INBOUND: TypeAdapter[PingFrame | CommandAckFrame | StatusFrame] = TypeAdapter(EdgeInbound)


# --- HTTP fallback ---


class PendingEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    event_id: str = Field(min_length=1, max_length=256)
    event_type: str = Field(min_length=1, max_length=256)
    thread_id: str | None = None
    details: dict[str, Any]


class SyncRequest(BaseModel):
    edge_agent_id: AgentId
    last_command_id: UUID | None = None
    pending_events: list[PendingEvent] = Field(default_factory=list, max_length=1000)
    status: dict[str, Any] = Field(default_factory=dict)
    acks: list[CommandAck] = Field(default_factory=list, max_length=1000)


class SyncResponse(BaseModel):
    commands: list[CommandData]
    ack_events: list[str]
    config_updates: dict[str, Any] = Field(default_factory=dict)


SYNC_REQUEST: TypeAdapter[SyncRequest] = TypeAdapter(SyncRequest)
