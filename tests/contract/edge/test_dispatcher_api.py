"""The dispatcher's internal NATS API (DESIGN section 4): reply shapes, error codes, bad inputs."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.harness.bus import assert_error, assert_ok, request, subscribe
from tests.harness.edge import (
    MAX_QUEUED_PER_AGENT,
    MINIMAL_PAYLOADS,
    EdgeStack,
    ack,
    edge_socket,
    get_agent,
    get_command,
    submit,
    submit_ok,
    wait_state,
)

pytestmark = pytest.mark.usefixtures("stack")

BAD_IDS = ["a.b", "*", ">", " ", "", "x" * 129, "a b", "a/b", "ä"]


def parse_time(value: Any) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None, value
    return parsed


# --- submit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command_type", sorted(MINIMAL_PAYLOADS))
async def test_submit_each_command_type_is_queued(nc: NATS, agent: str, command_type: str) -> None:
    reply = assert_ok(
        await submit(nc, agent, command_type=command_type, payload=MINIMAL_PAYLOADS[command_type])
    )
    uuid.UUID(reply["command_id"])
    assert reply["state"] == "queued" and reply["duplicate"] is False


async def test_submit_with_own_command_id_keeps_it(nc: NATS, agent: str) -> None:
    cid = str(uuid.uuid4())
    assert assert_ok(await submit(nc, agent, command_id=cid))["command_id"] == cid


INVALID_SUBMITS: dict[str, dict[str, Any]] = {
    "unknown command_type": {"command_type": "reboot_the_mac"},
    # A list or an object answered internal_error (the metric label looked it up in a dict).
    **{f"command_type {t!r}": {"command_type": t} for t in [["send_message_now"], {"a": 1}, 7, True]},
    **{f"priority {p!r}": {"priority": p} for p in ["urgent", "", "IMMEDIATE", 1, None]},
    # `true` and "60" found failing by this suite; fixed in fabfbdd.
    **{f"ttl_s {t!r}": {"ttl_s": t} for t in [0, 604801, -1, "soon", True, "60"]},
    **{f"command_id {c!r}": {"command_id": c} for c in ["not-a-uuid", "", "1234", 42]},
    **{f"edge_agent_id {a!r}": {"edge_agent_id": a} for a in BAD_IDS},
    "no edge_agent_id": {"edge_agent_id": None},
    "no command_type": {"command_type": None},
}


@pytest.mark.parametrize("case", sorted(INVALID_SUBMITS))
async def test_submit_invalid_request(nc: NATS, agent: str, case: str) -> None:
    body = {"edge_agent_id": agent, "command_type": "emit_event", "payload": {"event_type": "x"}}
    body.update(INVALID_SUBMITS[case])
    if case.startswith("no "):
        del body[case.removeprefix("no ")]
    assert_error(await request(nc, "edge.commands.submit", body), "invalid_request")


@pytest.mark.parametrize("payload", [None, ["thread_id", "text"]], ids=["missing", "array"])
async def test_submit_without_a_payload_object_is_refused(nc: NATS, agent: str, payload: Any) -> None:
    # Either reading fits the contract: a problem of the request, or of its payload.
    body = {"edge_agent_id": agent, "command_type": "send_message_now", "payload": payload}
    reply = await request(nc, "edge.commands.submit", {k: v for k, v in body.items() if v is not None})
    assert reply.get("ok") is False and reply["error"]["code"] in ("invalid_request", "invalid_payload"), (
        reply
    )


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"null", b""])
async def test_submit_unusable_body(nc: NATS, raw: bytes) -> None:
    assert_error(await request(nc, "edge.commands.submit", raw), "invalid_request")


async def test_submit_ttl_bounds_and_agent_id_of_128_chars_accepted(nc: NATS, agent: str) -> None:
    for ttl_s in (1, 604800):
        assert_ok(await submit(nc, agent, ttl_s=ttl_s))
    assert_ok(await submit(nc, "A_-9" * 32))


REQUIRED_FIELDS: dict[str, list[str]] = {
    "send_message_now": ["thread_id", "text"],
    "schedule_message": ["thread_id", "message_text", "send_at"],
    "set_rule": ["rule_type", "rule_config"],
    "cancel_scheduled": ["schedule_id"],
    "context_update": ["chat_guid", "thread_id", "app_id"],
    "context_reset": ["chat_guid", "thread_id"],
    "upload_retry": ["attachment_guid"],
    "emit_event": ["event_type"],
}
MISTYPED: list[tuple[str, str, Any]] = [
    ("send_message_now", "thread_id", 123),
    ("send_message_now", "text", ["x"]),
    ("send_message_now", "text", "x" * 5001),
    ("send_message_now", "bubble_type", "shout"),
    ("schedule_message", "send_at", "next tuesday"),
    # Found failing by this suite; fixed in fabfbdd.
    ("schedule_message", "send_at", 1893456000),
    ("schedule_message", "is_group", "maybe"),
    ("set_rule", "rule_config", "quiet"),
    ("context_update", "state", "paused"),
    ("cancel_scheduled", "schedule_id", None),
    ("emit_event", "event_type", {"a": 1}),
]


@pytest.mark.parametrize(
    ("command_type", "field_name", "value"),
    [(t, f, "<missing>") for t, fields in sorted(REQUIRED_FIELDS.items()) for f in fields] + MISTYPED,
)
async def test_submit_missing_or_mistyped_payload_field_is_named(
    nc: NATS, agent: str, command_type: str, field_name: str, value: Any
) -> None:
    payload = {**MINIMAL_PAYLOADS[command_type], field_name: value}
    if value == "<missing>":
        del payload[field_name]
    err = assert_error(await submit(nc, agent, command_type=command_type, payload=payload), "invalid_payload")
    assert field_name in err["message"], err


@pytest.mark.parametrize(
    ("command_type", "extra"),
    [
        ("send_message_now", {"text": "x" * 5000, "bubble_type": "reflex", "extra_field": 1}),
        ("send_message_now", {"bubble_type": "burst"}),
        ("send_message_now", {"bubble_type": "normal"}),
        ("schedule_message", {"send_at": "2030-01-01T10:00:00+00:00", "is_group": True}),
        ("context_update", {"state": "active", "room_id": "r", "metadata": {"k": 1}, "notify_text": "n"}),
        ("context_update", {"state": "completed"}),
        ("context_reset", {"reason": "r", "notify_text": "n"}),
        ("upload_retry", {"chat_guid": "c", "thread_id": "t", "reason": "r", "retry_count": 2}),
        ("emit_event", {"chat_guid": "c", "thread_id": "t", "room_id": "r", "event_data": {"a": 1}}),
    ],
)
async def test_submit_optional_and_extra_fields_accepted(
    nc: NATS, agent: str, command_type: str, extra: dict[str, Any]
) -> None:
    payload = {**MINIMAL_PAYLOADS[command_type], **extra}
    assert_ok(await submit(nc, agent, command_type=command_type, payload=payload))


# --- duplicates, conflicts, queue_full ---------------------------------------------------------


async def test_duplicate_same_content(nc: NATS, agent: str) -> None:
    cid = str(uuid.uuid4())
    first = assert_ok(await submit(nc, agent, command_id=cid, priority="normal", ttl_s=3600))
    again = assert_ok(await submit(nc, agent, command_id=cid, priority="normal", ttl_s=3600))
    assert first["duplicate"] is False
    assert (again["command_id"], again["duplicate"], again["state"]) == (cid, True, "queued")


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"thread_id": "t1", "text": "different"}},
        {"command_type": "emit_event", "payload": {"event_type": "x"}},
        {"priority": "immediate"},
        {"edge_agent_id": "another-agent"},
    ],
)
async def test_same_id_different_content_is_conflict(nc: NATS, agent: str, change: dict[str, Any]) -> None:
    cid = str(uuid.uuid4())
    assert_ok(await submit(nc, agent, command_id=cid))
    assert_error(await submit(nc, agent, command_id=cid, **change), "conflict")
    assert (await get_command(nc, cid))["payload"] == {"thread_id": "t1", "text": "hi"}


async def test_queue_full(nc: NATS, agent: str) -> None:
    first = str(uuid.uuid4())
    ids = [await submit_ok(nc, agent, command_id=first)]
    ids += [await submit_ok(nc, agent) for _ in range(MAX_QUEUED_PER_AGENT - 1)]
    assert_error(await submit(nc, agent), "queue_full")
    # Resubmitting an accepted command is a duplicate, not a new command: no queue_full.
    assert assert_ok(await submit(nc, agent, command_id=first))["duplicate"] is True
    assert_ok(await submit(nc, agent + "-b"))  # another agent is unaffected
    # A cancelled command is finished, so there is room again.
    assert_ok(await request(nc, "edge.commands.cancel", {"command_id": ids[0]}))
    assert_ok(await submit(nc, agent))
    assert_error(await submit(nc, agent), "queue_full")


# --- get and cancel -----------------------------------------------------------------------------


async def test_get_record_shape(nc: NATS, agent: str) -> None:
    payload = {"thread_id": "t9", "text": "hey", "bubble_type": "reflex"}
    cid = await submit_ok(nc, agent, payload=payload, priority="immediate", ttl_s=60)
    record = await get_command(nc, cid)
    assert {k: record[k] for k in ("command_id", "edge_agent_id", "command_type", "payload")} == {
        "command_id": cid,
        "edge_agent_id": agent,
        "command_type": "send_message_now",
        "payload": payload,
    }
    assert (record["priority"], record["ttl_s"], record["state"], record["attempts"]) == (
        "immediate",
        60,
        "queued",
        0,
    )
    assert record["error"] is None
    assert parse_time(record["updated_at"]) >= parse_time(record["created_at"])
    assert [h["state"] for h in record["history"]] == ["queued"]
    parse_time(record["history"][0]["at"])


@pytest.mark.parametrize(("priority", "ttl"), [(None, 86400), ("normal", 86400), ("immediate", 120)])
async def test_default_priority_is_normal_and_ttl_depends_on_it(
    nc: NATS, agent: str, priority: str | None, ttl: int
) -> None:
    cid = await submit_ok(nc, agent, **({} if priority is None else {"priority": priority}))
    record = await get_command(nc, cid)
    assert (record["priority"], record["ttl_s"]) == (priority or "normal", ttl)


async def test_get_and_cancel_of_unknown_command_is_not_found(nc: NATS) -> None:
    for subject in ("edge.commands.get", "edge.commands.cancel"):
        assert_error(await request(nc, subject, {"command_id": str(uuid.uuid4())}), "not_found")


BAD_BODIES: list[Any] = [
    b"{oops",
    b"[]",
    {},
    {"command_id": "nope"},
    {"command_id": 7},
    {"command_id": ""},
    {"command_id": "x.y"},
]


@pytest.mark.parametrize("subject", ["edge.commands.get", "edge.commands.cancel", "edge.agents.get"])
async def test_bad_request_on_every_subject_is_invalid_request(nc: NATS, subject: str) -> None:
    bodies = (
        BAD_BODIES
        if subject != "edge.agents.get"
        else [*BAD_BODIES[:3], *({"edge_agent_id": b} for b in BAD_IDS)]
    )
    for body in bodies:
        assert_error(await request(nc, subject, body), "invalid_request")


async def test_cancel_queued(nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent)
    record = assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cid}))
    assert (record["command_id"], record["state"]) == (cid, "cancelled")
    assert (await lifecycle.next(state="cancelled"))["previous_state"] == "queued"
    assert (await get_command(nc, cid))["state"] == "cancelled"
    assert_error(await request(nc, "edge.commands.cancel", {"command_id": cid}), "not_cancellable")
    info = await get_agent(nc, agent)  # still known, with nothing left queued
    assert (info["online"], info["queued"]) == (False, 0)


# --- agents.get ---------------------------------------------------------------------------------


async def test_agent_never_seen_is_offline_then_counts_its_queue(nc: NATS, agent: str) -> None:
    # Any valid id answers (59967a3): an agent never seen is offline with nothing queued.
    info = await get_agent(nc, agent)
    assert (info["online"], info["queued"]) == (False, 0)
    for _ in range(3):
        await submit_ok(nc, agent)
    info = await get_agent(nc, agent)
    assert (info["online"], info["queued"]) == (False, 3)
    assert info["connected_at"] is None and info["last_seen"] is None and info["last_status"] is None


# --- the first lifecycle event -----------------------------------------------------------------


async def test_first_queued_event(nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent, command_type="emit_event", payload={"event_type": "x"})
    event = await lifecycle.next()
    assert lifecycle.last_subject == f"edge.lifecycle.{agent}.{cid}"
    assert {
        k: event[k]
        for k in ("command_id", "edge_agent_id", "command_type", "state", "previous_state", "error")
    } == {
        "command_id": cid,
        "edge_agent_id": agent,
        "command_type": "emit_event",
        "state": "queued",
        "previous_state": None,
        "error": None,
    }
    assert "attempt" in event
    parse_time(event["at"])
    json.dumps(event)


# --- agents.commands and agents.purge: the operator view -----------------------------------------


async def test_agent_commands_lists_the_unfinished_in_delivery_order(nc: NATS, agent: str) -> None:
    normal = [await submit_ok(nc, agent) for _ in range(3)]
    urgent = await submit_ok(nc, agent, priority="immediate")
    finished = await submit_ok(nc, agent)
    assert_ok(await request(nc, "edge.commands.cancel", {"command_id": finished}))
    reply = assert_ok(await request(nc, "edge.agents.commands", {"edge_agent_id": agent}))
    assert [c["command_id"] for c in reply["commands"]] == [urgent, *normal]
    assert reply["total"] == 4
    stored = await get_command(nc, urgent)  # each one in the `edge.commands.get` shape
    assert reply["commands"][0] == {k: v for k, v in stored.items() if k != "ok"}
    limited = assert_ok(await request(nc, "edge.agents.commands", {"edge_agent_id": agent, "limit": 2}))
    assert [c["command_id"] for c in limited["commands"]] == [urgent, normal[0]]
    assert limited["total"] == 4


async def test_agent_commands_of_an_agent_never_seen_is_empty(nc: NATS, agent: str) -> None:
    reply = assert_ok(await request(nc, "edge.agents.commands", {"edge_agent_id": agent}))
    assert (reply["commands"], reply["total"]) == ([], 0)


@pytest.mark.parametrize("subject", ["edge.agents.commands", "edge.agents.purge"])
async def test_operator_view_refuses_bad_requests(nc: NATS, agent: str, subject: str) -> None:
    bad: list[Any] = [*BAD_BODIES[:3], *({"edge_agent_id": b} for b in BAD_IDS)]
    limits: list[Any] = [0, 1001, -1, "5", 1.5, True, [1], {}]
    reasons: list[Any] = ["x" * 201, 7, ["a"], {}]
    if subject == "edge.agents.commands":
        bad += [{"edge_agent_id": agent, "limit": x} for x in limits]
    else:
        bad += [{"edge_agent_id": agent, "reason": x} for x in reasons]
    for body in bad:
        assert_error(await request(nc, subject, body), "invalid_request")


async def test_purge_cancels_an_offline_agents_queue_with_the_reason(nc: NATS, agent: str) -> None:
    queued = [await submit_ok(nc, agent) for _ in range(3)]
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    reply = assert_ok(await request(nc, "edge.agents.purge", {"edge_agent_id": agent, "reason": "user left"}))
    assert (reply["cancelled"], reply["left"]) == (3, 0)
    events = [await lifecycle.next(state="cancelled") for _ in queued]
    assert sorted(e["command_id"] for e in events) == sorted(queued)
    assert {(e["previous_state"], e["error"]) for e in events} == {("queued", "purged: user left")}
    for cid in queued:
        record = await get_command(nc, cid)
        assert (record["state"], record["error"]) == ("cancelled", "purged: user left")
    plain = await submit_ok(nc, agent)
    assert assert_ok(await request(nc, "edge.agents.purge", {"edge_agent_id": agent}))["cancelled"] == 1
    assert (await get_command(nc, plain))["error"] == "purged"


async def test_purge_cancels_sent_commands_and_leaves_what_the_agent_runs(
    nc: NATS, agent: str, stack: EdgeStack
) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        running, sent = await submit_ok(nc, agent), await submit_ok(nc, agent)
        handed = {(await ws.expect("command"))["command_id"] for _ in range(2)}
        assert handed == {running, sent}
        await ack(ws, running, "executing")
        await wait_state(nc, running, "executing")
        lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
        reply = assert_ok(await request(nc, "edge.agents.purge", {"edge_agent_id": agent}))
        assert (reply["cancelled"], reply["left"]) == (1, 1)
        event = await lifecycle.next(state="cancelled")
        assert (event["command_id"], event["previous_state"], event["error"]) == (sent, "sent", "purged")
        assert (await get_command(nc, running))["state"] == "executing"
        listed = assert_ok(await request(nc, "edge.agents.commands", {"edge_agent_id": agent}))
        assert [c["command_id"] for c in listed["commands"]] == [running]
