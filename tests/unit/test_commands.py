"""The command lifecycle's pure decisions (acks, timers, pulls) where the wire cannot reach: the
ack outcomes that are counted, the 300 s cap, and timer and pull rules at exact instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from services.command_dispatcher.lifecycle import (
    AckOutcome,
    TimerAction,
    Timing,
    apply_ack,
    due_for_pull,
    moved,
    new_record,
    timer_action,
)
from shared.protocol.commands import (
    SUBMIT_REQUEST,
    CommandRecord,
    CommandState,
    SubmitRequest,
    parse_request,
)
from shared.protocol.edge import AckStatus, CommandAck, CommandType, Priority
from shared.protocol.errors import InvalidRequest

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(ack_timeout_s=10, max_ack_timeout_s=300, max_attempts=3, execution_timeout_s=100)


def record(
    priority: Priority = Priority.NORMAL, ttl_s: int | None = None, agent: str = "a1"
) -> CommandRecord:
    req = SubmitRequest(
        edge_agent_id=agent,
        command_type=CommandType.SEND_MESSAGE_NOW,
        payload={"thread_id": "t", "text": "x"},
        priority=priority,
        ttl_s=ttl_s,
    )
    return new_record(req, uuid4(), T0)


def sent(rec: CommandRecord, at: datetime, attempts: int = 1, to: str = "c1") -> CommandRecord:
    return moved(rec, CommandState.SENT, at, attempts=attempts, sent_at=at, sent_to=to)


def ack(rec: CommandRecord, status: AckStatus, agent: str = "a1") -> tuple[CommandRecord | None, AckOutcome]:
    return apply_ack(rec, agent, CommandAck(command_id=rec.command_id, status=status), T0)


def test_ack_for_terminal_command_changes_nothing() -> None:
    done, _ = ack(sent(record(), T0), AckStatus.COMPLETED)
    assert done is not None
    assert ack(done, AckStatus.FAILED) == (None, AckOutcome.TERMINAL)


def test_ack_for_foreign_command_changes_nothing() -> None:
    assert ack(sent(record(), T0), AckStatus.COMPLETED, agent="intruder") == (None, AckOutcome.FOREIGN)


def test_ack_for_unknown_command_changes_nothing() -> None:
    assert apply_ack(None, "a1", CommandAck(command_id=uuid4(), status=AckStatus.RECEIVED), T0) == (
        None,
        AckOutcome.UNKNOWN,
    )


def test_ack_wait_doubles_and_is_capped() -> None:
    timing = Timing(ack_timeout_s=10, max_ack_timeout_s=300)
    assert [timing.ack_wait(n) for n in (1, 2, 3, 4, 5, 6)] == [10, 20, 40, 80, 160, 300]


def test_timer_delivers_queued_and_expires_at_ttl() -> None:
    rec = record(ttl_s=60)
    assert timer_action(rec, T0, TIMING)[0] is TimerAction.DELIVER
    assert timer_action(rec, T0 + timedelta(seconds=60), TIMING)[0] is TimerAction.EXPIRE


def test_timer_redelivers_after_ack_wait_then_gives_up() -> None:
    first = sent(record(), T0)
    assert timer_action(first, T0 + timedelta(seconds=9), TIMING) == (
        TimerAction.WAIT,
        T0 + timedelta(seconds=10),
    )
    assert timer_action(first, T0 + timedelta(seconds=10), TIMING)[0] is TimerAction.REDELIVER
    last = sent(record(), T0, attempts=3)
    assert timer_action(last, T0 + timedelta(seconds=39), TIMING)[0] is TimerAction.WAIT
    assert timer_action(last, T0 + timedelta(seconds=40), TIMING)[0] is TimerAction.UNDELIVERED


def test_timer_fails_execution_that_takes_too_long() -> None:
    received, _ = ack(sent(record(), T0), AckStatus.RECEIVED)
    assert received is not None
    assert timer_action(received, T0 + timedelta(seconds=99), TIMING)[0] is TimerAction.WAIT
    assert timer_action(received, T0 + timedelta(seconds=100), TIMING)[0] is TimerAction.EXECUTION_TIMEOUT


def test_received_command_does_not_expire() -> None:
    received, _ = ack(sent(record(ttl_s=10), T0), AckStatus.RECEIVED)
    assert received is not None
    assert timer_action(received, T0 + timedelta(seconds=50), TIMING)[0] is TimerAction.WAIT


def test_socket_pull_takes_back_commands_sent_to_an_older_connection() -> None:
    rec = sent(record(), T0, to="old")
    assert due_for_pull(rec, "new", True, T0, TIMING)
    assert not due_for_pull(rec, "old", True, T0, TIMING)


def test_sync_pull_waits_for_the_ack_timeout() -> None:
    rec = sent(record(), T0, to="sync-1")
    assert not due_for_pull(rec, "sync-2", False, T0 + timedelta(seconds=5), TIMING)
    assert due_for_pull(rec, "sync-2", False, T0 + timedelta(seconds=10), TIMING)


def test_pull_skips_commands_out_of_attempts_or_expired() -> None:
    assert not due_for_pull(sent(record(), T0, attempts=3), "new", True, T0, TIMING)
    assert not due_for_pull(record(ttl_s=5), "c", True, T0 + timedelta(seconds=5), TIMING)


def test_a_payload_that_is_not_an_object_is_invalid_request() -> None:
    # The wire test accepts invalid_request or invalid_payload; this pins the product's choice.
    with pytest.raises(InvalidRequest):
        parse_request(SUBMIT_REQUEST, b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": []}')
