"""The command lifecycle's pure decisions (acks, timers, pulls) where the wire cannot reach: the
ack outcomes that are counted, the 300 s cap, timer and pull rules at exact instants, the stored
record's round trip and the events a write publishes."""

from __future__ import annotations

import uuid

import orjson
import pytest

from services.command_dispatcher.lifecycle import (
    AckOutcome,
    Link,
    TimerAction,
    Timing,
    apply_ack,
    due_for_pull,
    mark_sent,
    new_record,
    timer_action,
)
from services.command_dispatcher.records import Record, RecordCodec, lifecycle_events
from shared.protocol.commands import SUBMIT_REQUEST, CommandRecord, CommandState, SubmitRequest, parse_request
from shared.protocol.edge import AckStatus, CommandAck, CommandType, Priority
from shared.protocol.errors import InvalidRequest

T0 = 1_800_000_000.0
TIMING = Timing(ack_timeout_s=10, max_ack_timeout_s=300, max_attempts=3, execution_timeout_s=100)
ONLINE = Link("c1", since=T0 - 60)


def record(ttl_s: int | None = None, agent: str = "a1", link: Link | None = None) -> Record:
    req = SubmitRequest(
        edge_agent_id=agent,
        command_type=CommandType.SEND_MESSAGE_NOW,
        payload={"thread_id": "t", "text": "x"},
        priority=Priority.NORMAL,
        ttl_s=ttl_s,
    )
    return new_record(req, str(uuid.uuid4()), T0, link)


def sent(rec: Record, at: float, attempts: int = 1, to: str = "c1") -> Record:
    for _ in range(attempts):
        rec = mark_sent(rec, to, at)
    return rec


def ack(rec: Record, status: AckStatus, agent: str = "a1") -> tuple[Record | None, AckOutcome]:
    return apply_ack(rec, agent, CommandAck(command_id=uuid.UUID(rec.command_id), status=status), T0)


def test_ack_for_terminal_command_changes_nothing() -> None:
    done, _ = ack(sent(record(), T0), AckStatus.COMPLETED)
    assert done is not None
    assert ack(done, AckStatus.FAILED) == (None, AckOutcome.TERMINAL)


def test_ack_for_foreign_command_changes_nothing() -> None:
    assert ack(sent(record(), T0), AckStatus.COMPLETED, agent="intruder") == (None, AckOutcome.FOREIGN)


def test_ack_for_unknown_command_changes_nothing() -> None:
    assert apply_ack(None, "a1", CommandAck(command_id=uuid.uuid4(), status=AckStatus.RECEIVED), T0) == (
        None,
        AckOutcome.UNKNOWN,
    )


def test_ack_wait_doubles_and_is_capped() -> None:
    timing = Timing(ack_timeout_s=10, max_ack_timeout_s=300)
    assert [timing.ack_wait(n) for n in (1, 2, 3, 4, 5, 6)] == [10, 20, 40, 80, 160, 300]


def test_a_command_for_a_connected_agent_is_created_sent_to_its_socket() -> None:
    rec = record(link=ONLINE)
    assert (rec.state, rec.attempts, rec.sent_to) == (CommandState.SENT, 1, "c1")
    assert [state for state, _ in rec.history] == [CommandState.QUEUED, CommandState.SENT]


def test_queued_command_waits_for_a_socket_and_expires_at_its_ttl() -> None:
    rec = record(ttl_s=60)
    assert timer_action(rec, T0, TIMING, None) == (TimerAction.WAIT, T0 + 60)
    assert timer_action(rec, T0 + 60, TIMING, None)[0] is TimerAction.EXPIRE


def test_queued_command_of_a_connected_agent_is_sent_once_its_connect_pull_had_its_go() -> None:
    link = Link("c1", since=T0 + 5)
    rec = record()
    assert timer_action(rec, T0 + 5.5, TIMING, link) == (TimerAction.WAIT, T0 + 5 + TIMING.connect_grace_s)
    assert timer_action(rec, T0 + 6, TIMING, link)[0] is TimerAction.DELIVER


def test_timer_redelivers_after_ack_wait_then_gives_up() -> None:
    first = sent(record(), T0)
    assert timer_action(first, T0 + 9, TIMING, ONLINE) == (TimerAction.WAIT, T0 + 10)
    assert timer_action(first, T0 + 10, TIMING, ONLINE)[0] is TimerAction.REDELIVER
    last = sent(record(), T0, attempts=3)
    assert timer_action(last, T0 + 39, TIMING, ONLINE)[0] is TimerAction.WAIT
    assert timer_action(last, T0 + 40, TIMING, ONLINE)[0] is TimerAction.UNDELIVERED


def test_unacked_command_of_an_offline_agent_waits_for_it_to_come_back() -> None:
    assert timer_action(sent(record(ttl_s=60), T0), T0 + 30, TIMING, None) == (TimerAction.WAIT, T0 + 60)


def test_command_sent_to_a_replaced_socket_goes_to_the_new_one_without_waiting_for_its_ack() -> None:
    rec = sent(record(), T0, to="old")
    new = Link("new", since=T0 + 2)
    assert timer_action(rec, T0 + 2.5, TIMING, new)[0] is TimerAction.WAIT
    assert timer_action(rec, T0 + 2 + TIMING.connect_grace_s, TIMING, new)[0] is TimerAction.REDELIVER


def test_timer_fails_execution_that_takes_too_long() -> None:
    received, _ = ack(sent(record(), T0), AckStatus.RECEIVED)
    assert received is not None
    assert timer_action(received, T0 + 99, TIMING, ONLINE)[0] is TimerAction.WAIT
    assert timer_action(received, T0 + 100, TIMING, ONLINE)[0] is TimerAction.EXECUTION_TIMEOUT


def test_received_command_does_not_expire() -> None:
    received, _ = ack(sent(record(ttl_s=10), T0), AckStatus.RECEIVED)
    assert received is not None
    assert timer_action(received, T0 + 50, TIMING, ONLINE)[0] is TimerAction.WAIT


def test_socket_pull_takes_back_commands_sent_to_an_older_connection() -> None:
    rec = sent(record(), T0, to="old")
    assert due_for_pull(rec, "new", True, T0, TIMING)
    assert not due_for_pull(rec, "old", True, T0, TIMING)


def test_sync_pull_waits_for_the_ack_timeout() -> None:
    rec = sent(record(), T0, to="sync-1")
    assert not due_for_pull(rec, "sync-2", False, T0 + 5, TIMING)
    assert due_for_pull(rec, "sync-2", False, T0 + 10, TIMING)


def test_pull_skips_commands_out_of_attempts_or_expired() -> None:
    assert not due_for_pull(sent(record(), T0, attempts=3), "new", True, T0, TIMING)
    assert not due_for_pull(record(ttl_s=5), "c", True, T0 + 5, TIMING)


def test_a_stored_record_reads_back_to_the_letter_and_is_the_get_reply() -> None:
    done, _ = ack(sent(record(link=ONLINE), T0 + 1), AckStatus.COMPLETED)
    assert done is not None
    stored = RecordCodec.encode(done)
    assert RecordCodec.encode(RecordCodec.decode(stored)) == stored
    reply = CommandRecord.model_validate(done.public())
    assert [h.state for h in reply.history] == ["queued", "sent", "sent", "completed"]
    assert "sent_to" not in done.public() and orjson.loads(stored)["sent_to"] == "c1"


def test_a_write_that_moves_a_command_several_states_publishes_an_event_for_each() -> None:
    created = record(link=ONLINE)
    events = [orjson.loads(e) for e in lifecycle_events(None, created)]
    assert [(e["previous_state"], e["state"], e["attempt"]) for e in events] == [
        (None, "queued", 0),
        ("queued", "sent", 1),
    ]
    moved: Record | None = created
    for status in (AckStatus.RECEIVED, AckStatus.EXECUTING, AckStatus.FAILED):
        assert moved is not None
        moved, _ = apply_ack(
            moved, "a1", CommandAck(command_id=uuid.UUID(created.command_id), status=status, error="x"), T0
        )
    assert moved is not None
    events = [orjson.loads(e) for e in lifecycle_events(created, moved)]
    assert [(e["previous_state"], e["state"], e["attempt"], e["error"]) for e in events] == [
        ("sent", "received", 1, None),
        ("received", "executing", 1, None),
        ("executing", "failed", 1, "x"),
    ]


def test_a_payload_that_is_not_an_object_is_invalid_request() -> None:
    # The wire test accepts invalid_request or invalid_payload; this pins the product's choice.
    with pytest.raises(InvalidRequest):
        parse_request(SUBMIT_REQUEST, b'{"edge_agent_id": "a", "command_type": "set_rule", "payload": []}')
