"""The command state machine: pure decisions, no I/O, so the lifecycle rules are unit-tested directly.

Every function here decides from a record and a clock alone; the store applies what they return
with a compare-and-set, so it does not matter which dispatcher replica decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from shared.protocol.codec import iso
from shared.protocol.commands import (
    DEFAULT_TTL_S,
    TERMINAL,
    CommandRecord,
    CommandState,
    HistoryEntry,
    LifecycleEvent,
    SubmitRequest,
)
from shared.protocol.edge import AckStatus, CommandAck, Priority

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


def resolved_ttl(req: SubmitRequest) -> int:
    return req.ttl_s if req.ttl_s is not None else DEFAULT_TTL_S[req.priority]


def same_content(record: CommandRecord, req: SubmitRequest) -> bool:
    """Whether a re-submission under the record's id asks for exactly this command."""
    return (
        record.edge_agent_id == req.edge_agent_id
        and record.command_type == req.command_type
        and record.payload == req.payload
        and record.priority == req.priority
        and record.ttl_s == resolved_ttl(req)
    )


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
