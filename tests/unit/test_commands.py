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
    pull_order,
    timer_action,
)
from shared.protocol.commands import (
    SUBMIT_REQUEST,
    CommandRecord,
    CommandState,
    SubmitRequest,
    parse_request,
    validate_payload,
)
from shared.protocol.edge import AckStatus, CommandAck, CommandType, Priority
from shared.protocol.errors import InvalidPayload, InvalidRequest

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


def test_default_ttl_depends_on_priority() -> None:
    assert record(Priority.NORMAL).ttl_s == 86400
    assert record(Priority.IMMEDIATE).ttl_s == 120


def test_acks_move_forward_through_every_state() -> None:
    rec = sent(record(), T0)
    for status, state in [
        (AckStatus.RECEIVED, CommandState.RECEIVED),
        (AckStatus.EXECUTING, CommandState.EXECUTING),
        (AckStatus.COMPLETED, CommandState.COMPLETED),
    ]:
        new, outcome = ack(rec, status)
        assert outcome is AckOutcome.APPLIED and new is not None and new.state is state
        rec = new
    assert [h.state for h in rec.history] == ["queued", "sent", "received", "executing", "completed"]
    assert rec.completed_at is not None


def test_ack_never_moves_backwards() -> None:
    executing, _ = ack(sent(record(), T0), AckStatus.EXECUTING)
    assert executing is not None
    assert ack(executing, AckStatus.RECEIVED) == (None, AckOutcome.BACKWARDS)
    assert ack(executing, AckStatus.EXECUTING) == (None, AckOutcome.BACKWARDS)


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


def test_failed_ack_keeps_the_agents_error() -> None:
    rec = sent(record(), T0)
    new, _ = apply_ack(
        rec, "a1", CommandAck(command_id=rec.command_id, status=AckStatus.FAILED, error="boom"), T0
    )
    assert new is not None and new.state is CommandState.FAILED and new.error == "boom"


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


def test_pull_order_is_priority_then_submission() -> None:
    n1, i1, n2, i2 = record(), record(Priority.IMMEDIATE), record(), record(Priority.IMMEDIATE)
    n1 = n1.model_copy(update={"created_at": T0})
    i1 = i1.model_copy(update={"created_at": T0 + timedelta(seconds=1)})
    n2 = n2.model_copy(update={"created_at": T0 + timedelta(seconds=2)})
    i2 = i2.model_copy(update={"created_at": T0 + timedelta(seconds=3)})
    assert sorted([n2, i2, n1, i1], key=pull_order) == [i1, i2, n1, n2]


@pytest.mark.parametrize(
    ("command_type", "payload", "field"),
    [
        ("send_message_now", {"text": "x"}, "thread_id"),
        ("send_message_now", {"thread_id": "t", "text": "x" * 5001}, "text"),
        ("send_message_now", {"thread_id": "t", "text": "x", "bubble_type": "loud"}, "bubble_type"),
        ("send_message_now", {"thread_id": 5, "text": "x"}, "thread_id"),
        ("schedule_message", {"thread_id": "t", "message_text": "x", "send_at": "tomorrow"}, "send_at"),
        ("set_rule", {"rule_type": "r", "rule_config": "not an object"}, "rule_config"),
        ("cancel_scheduled", {}, "schedule_id"),
        ("context_update", {"chat_guid": "c", "thread_id": "t"}, "app_id"),
        ("context_update", {"chat_guid": "c", "thread_id": "t", "app_id": "a", "state": "paused"}, "state"),
        ("context_reset", {"chat_guid": "c"}, "thread_id"),
        ("upload_retry", {"chat_guid": "c"}, "attachment_guid"),
        ("emit_event", {"thread_id": "t"}, "event_type"),
    ],
)
def test_invalid_payload_names_the_field(command_type: str, payload: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidPayload) as err:
        validate_payload(CommandType(command_type), payload)
    assert field in err.value.message


@pytest.mark.parametrize(
    ("command_type", "payload"),
    [
        ("send_message_now", {"thread_id": "t", "text": "hi", "bubble_type": "reflex", "extra": 1}),
        ("schedule_message", {"thread_id": "t", "message_text": "x", "send_at": "2026-01-01T10:00:00Z"}),
        ("set_rule", {"rule_type": "quiet_hours", "rule_config": {"from": 22}}),
        ("cancel_scheduled", {"schedule_id": "s1"}),
        ("context_update", {"chat_guid": "c", "thread_id": "t", "app_id": "a", "state": "active"}),
        ("context_reset", {"chat_guid": "c", "thread_id": "t"}),
        ("upload_retry", {"attachment_guid": "g", "retry_count": 2}),
        ("emit_event", {"event_type": "e", "event_data": {"k": 1}}),
    ],
)
def test_valid_payloads_pass(command_type: str, payload: dict[str, object]) -> None:
    validate_payload(CommandType(command_type), payload)


@pytest.mark.parametrize(
    "body",
    [
        b'{"edge_agent_id": "a", "command_type": "reboot", "payload": {}}',
        b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": {}, "priority": "urgent"}',
        b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": {}, "ttl_s": 0}',
        b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": {}, "ttl_s": 604801}',
        b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": {}, "command_id": "nope"}',
        b'{"edge_agent_id": "a.b", "command_type": "set_rule", "payload": {}}',
        b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": []}',
        b"not json",
    ],
)
def test_bad_submit_requests_are_invalid_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(SUBMIT_REQUEST, body)
