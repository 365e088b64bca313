"""The command state machine: pure decisions, no I/O, so the lifecycle rules are unit-tested directly.

Every function here decides from a record, what is known of the agent's socket and a clock; the
store applies what they return with a compare-and-set, so it does not matter which dispatcher
replica decides, or that its view of the record may be a moment old.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.protocol.commands import DEFAULT_TTL_S, TERMINAL, CommandState, SubmitRequest
from shared.protocol.edge import AckStatus, CommandAck, Priority

from .records import Record

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


@dataclass(frozen=True, slots=True)
class Link:
    """The agent's live socket, as far as the dispatcher knows."""

    connection_id: str
    since: float  # when that socket connected (unix time)
    gateway_id: str = ""  # the gateway replica holding it


@dataclass(frozen=True, slots=True)
class Timing:
    """The dispatcher's timer settings, in seconds."""

    ack_timeout_s: float = 10.0
    max_ack_timeout_s: float = 300.0
    max_attempts: int = 5
    execution_timeout_s: float = 1800.0
    # After an agent connects, its gateway pulls what waits for it, in order. The timers only
    # step in for what is still waiting this long after the connect (a submit that raced it).
    connect_grace_s: float = 1.0

    def ack_wait(self, attempts: int) -> float:
        """How long a send waits for an ack: doubling with every attempt, capped."""
        return min(self.ack_timeout_s * 2.0 ** max(attempts - 1, 0), self.max_ack_timeout_s)


def resolved_ttl(req: SubmitRequest) -> int:
    return req.ttl_s if req.ttl_s is not None else DEFAULT_TTL_S[req.priority]


def new_record(req: SubmitRequest, command_id: str, now: float, link: Link | None) -> Record:
    """A new command: `queued`, and at once `sent` to the agent's socket when it has one."""
    ttl = resolved_ttl(req)
    record = Record(
        command_id=command_id,
        edge_agent_id=req.edge_agent_id,
        command_type=req.command_type.value,
        payload=req.payload,
        priority=req.priority.value,
        ttl_s=ttl,
        state=CommandState.QUEUED,
        attempts=0,
        error=None,
        created_at=now,
        updated_at=now,
        expires_at=now + ttl,
        history=[(CommandState.QUEUED, now)],
    )
    return mark_sent(record, link.connection_id, now) if link is not None else record


def mark_sent(record: Record, connection_id: str, now: float) -> Record:
    return record.moved(
        CommandState.SENT, now, attempts=record.attempts + 1, sent_at=now, sent_to=connection_id
    )


def same_content(record: Record, req: SubmitRequest) -> bool:
    """Whether a re-submission under the record's id asks for exactly this command."""
    return (
        record.edge_agent_id == req.edge_agent_id
        and record.command_type == req.command_type.value
        and record.payload == req.payload
        and record.priority == req.priority.value
        and record.ttl_s == resolved_ttl(req)
    )


class AckOutcome(StrEnum):
    """What an ack did; the label of the acks counter."""

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
    record: Record | None, edge_agent_id: str, ack: CommandAck, now: float
) -> tuple[Record | None, AckOutcome]:
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
        changes["completed_at"] = ack.completed_at.timestamp() if ack.completed_at else now
        if target is CommandState.FAILED:
            changes["error"] = ack.error or "failed"
    return record.moved(target, now, **changes), AckOutcome.APPLIED


class TimerAction(StrEnum):
    DONE = "done"  # terminal: nothing left to time
    EXPIRE = "expire"
    DELIVER = "deliver"  # queued, the agent online and its connect pull done: send
    REDELIVER = "redeliver"  # sent, no ack in time (or its socket replaced), attempts left: send again
    UNDELIVERED = "undelivered"  # sent, no ack in time, attempts used up
    EXECUTION_TIMEOUT = "execution_timeout"
    WAIT = "wait"


def timer_action(
    record: Record, now: float, timing: Timing, link: Link | None
) -> tuple[TimerAction, float | None]:
    """What to do for `record` at `now`, and for WAIT when to look again (None: only when the
    record or the agent's socket changes)."""
    state = record.state
    if state in TERMINAL:
        return TimerAction.DONE, None
    if state in UNACKED and now >= record.expires_at:
        return TimerAction.EXPIRE, None
    if state is CommandState.QUEUED:
        if link is None:
            return TimerAction.WAIT, record.expires_at
        due = max(record.created_at, link.since) + timing.connect_grace_s
        if now >= due:
            return TimerAction.DELIVER, None
        return TimerAction.WAIT, min(due, record.expires_at)
    if state is CommandState.SENT:
        assert record.sent_at is not None
        if (
            link is not None
            and link.connection_id != record.sent_to
            and record.attempts < timing.max_attempts
        ):
            # Its socket was replaced: the new one gets it at once (after the connect pull had its go).
            due = max(record.sent_at, link.since) + timing.connect_grace_s
        else:
            due = record.sent_at + timing.ack_wait(record.attempts)
        if now < due:
            return TimerAction.WAIT, min(due, record.expires_at)
        if record.attempts >= timing.max_attempts:
            return TimerAction.UNDELIVERED, None
        if link is None:
            return TimerAction.WAIT, record.expires_at  # sent again once the agent is back
        return TimerAction.REDELIVER, None
    assert record.acked_at is not None
    deadline = record.acked_at + timing.execution_timeout_s
    if now >= deadline:
        return TimerAction.EXECUTION_TIMEOUT, None
    return TimerAction.WAIT, deadline


def due_for_pull(record: Record, connection_id: str, via_socket: bool, now: float, timing: Timing) -> bool:
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
    return now >= record.sent_at + timing.ack_wait(record.attempts)


def pull_order(record: Record) -> tuple[int, float]:
    """`immediate` before `normal`, submission order within a priority."""
    return (0 if record.priority == Priority.IMMEDIATE.value else 1, record.created_at)
