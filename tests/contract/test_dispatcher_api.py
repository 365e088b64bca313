"""The dispatcher's internal NATS API (DESIGN section 4): reply shapes, error codes, bad inputs."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.contract.helpers import (
    MAX_QUEUED_PER_AGENT,
    MINIMAL_PAYLOADS,
    assert_error,
    assert_ok,
    get_agent,
    get_command,
    request,
    submit,
    submit_ok,
    subscribe,
)

pytestmark = pytest.mark.usefixtures("stack")

BAD_IDS = ["a.b", "*", ">", " ", "", "x" * 129, "a b", "a/b", "ä"]


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def parse_time(value: Any) -> datetime:
    assert isinstance(value, str), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- submit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command_type", sorted(MINIMAL_PAYLOADS))
async def test_submit_each_command_type_is_queued(nc: NATS, agent: str, command_type: str) -> None:
    reply = assert_ok(
        await submit(nc, agent, command_type=command_type, payload=MINIMAL_PAYLOADS[command_type])
    )
    assert is_uuid(reply["command_id"])
    assert reply["state"] == "queued"
    assert reply["duplicate"] is False


async def test_submit_with_own_command_id_keeps_it(nc: NATS, agent: str) -> None:
    cid = str(uuid.uuid4())
    reply = assert_ok(await submit(nc, agent, command_id=cid))
    assert reply["command_id"] == cid


async def test_submit_unknown_command_type(nc: NATS, agent: str) -> None:
    assert_error(await submit(nc, agent, command_type="reboot_the_mac"), "invalid_request")


@pytest.mark.parametrize("priority", ["urgent", "", "IMMEDIATE", 1, None])
async def test_submit_bad_priority(nc: NATS, agent: str, priority: Any) -> None:
    assert_error(await submit(nc, agent, priority=priority), "invalid_request")


@pytest.mark.parametrize("ttl_s", [0, 604801, -1, "soon"])
async def test_submit_bad_ttl(nc: NATS, agent: str, ttl_s: Any) -> None:
    assert_error(await submit(nc, agent, ttl_s=ttl_s), "invalid_request")


@pytest.mark.parametrize("ttl_s", [True, "60"])
async def test_submit_ttl_of_wrong_json_type(nc: NATS, agent: str, ttl_s: Any) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    assert_error(await submit(nc, agent, ttl_s=ttl_s), "invalid_request")


@pytest.mark.parametrize("ttl_s", [1, 604800])
async def test_submit_ttl_bounds_accepted(nc: NATS, agent: str, ttl_s: int) -> None:
    assert_ok(await submit(nc, agent, ttl_s=ttl_s))


@pytest.mark.parametrize("command_id", ["not-a-uuid", "", "1234", 42])
async def test_submit_non_uuid_command_id(nc: NATS, agent: str, command_id: Any) -> None:
    assert_error(await submit(nc, agent, command_id=command_id), "invalid_request")


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_submit_bad_agent_id(nc: NATS, bad_id: str) -> None:
    assert_error(await submit(nc, bad_id), "invalid_request")


async def test_submit_agent_id_of_128_chars_accepted(nc: NATS) -> None:
    agent = "A_-9" * 32
    assert len(agent) == 128
    assert_ok(await submit(nc, agent))


@pytest.mark.parametrize("missing", ["edge_agent_id", "command_type", "payload"])
async def test_submit_missing_request_field(nc: NATS, agent: str, missing: str) -> None:
    body = {"edge_agent_id": agent, "command_type": "emit_event", "payload": {"event_type": "x"}}
    del body[missing]
    reply = await request(nc, "edge.commands.submit", body)
    assert reply.get("ok") is False, reply
    # A missing payload could be read as a request problem or a payload problem.
    assert reply["error"]["code"] in (
        ("invalid_request", "invalid_payload") if missing == "payload" else ("invalid_request",)
    ), reply


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"null", b""])
async def test_submit_unusable_body(nc: NATS, raw: bytes) -> None:
    assert_error(await request(nc, "edge.commands.submit", raw), "invalid_request")


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


@pytest.mark.parametrize(
    ("command_type", "missing"),
    [(t, f) for t, fields in sorted(REQUIRED_FIELDS.items()) for f in fields],
)
async def test_submit_missing_payload_field_names_it(
    nc: NATS, agent: str, command_type: str, missing: str
) -> None:
    payload = dict(MINIMAL_PAYLOADS[command_type])
    del payload[missing]
    err = assert_error(await submit(nc, agent, command_type=command_type, payload=payload), "invalid_payload")
    assert missing in err["message"], err


@pytest.mark.parametrize(
    ("command_type", "field_name", "value"),
    [
        ("send_message_now", "thread_id", 123),
        ("send_message_now", "text", ["x"]),
        ("send_message_now", "text", "x" * 5001),
        ("send_message_now", "bubble_type", "shout"),
        ("schedule_message", "send_at", "next tuesday"),
        ("schedule_message", "is_group", "maybe"),
        ("set_rule", "rule_config", "quiet"),
        ("context_update", "state", "paused"),
        ("cancel_scheduled", "schedule_id", None),
        ("emit_event", "event_type", {"a": 1}),
    ],
)
async def test_submit_mistyped_payload_field_names_it(
    nc: NATS, agent: str, command_type: str, field_name: str, value: Any
) -> None:
    payload = {**MINIMAL_PAYLOADS[command_type], field_name: value}
    err = assert_error(await submit(nc, agent, command_type=command_type, payload=payload), "invalid_payload")
    assert field_name in err["message"], err


async def test_submit_send_at_number_is_not_iso8601(nc: NATS, agent: str) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    payload = {**MINIMAL_PAYLOADS["schedule_message"], "send_at": 1893456000}
    err = assert_error(
        await submit(nc, agent, command_type="schedule_message", payload=payload), "invalid_payload"
    )
    assert "send_at" in err["message"]


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
    assert_ok(
        await submit(
            nc, agent, command_type=command_type, payload={**MINIMAL_PAYLOADS[command_type], **extra}
        )
    )


async def test_submit_payload_not_an_object(nc: NATS, agent: str) -> None:
    reply = await submit(nc, agent, payload=["thread_id", "text"])
    assert reply.get("ok") is False, reply
    assert reply["error"]["code"] in ("invalid_request", "invalid_payload"), reply


# --- duplicates, conflicts, queue_full ---------------------------------------------------------


async def test_duplicate_same_content(nc: NATS, agent: str) -> None:
    cid = str(uuid.uuid4())
    first = assert_ok(await submit(nc, agent, command_id=cid, priority="normal", ttl_s=3600))
    assert first["duplicate"] is False
    again = assert_ok(await submit(nc, agent, command_id=cid, priority="normal", ttl_s=3600))
    assert again["command_id"] == cid
    assert again["duplicate"] is True
    assert again["state"] == "queued"


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"thread_id": "t1", "text": "different"}},
        {"command_type": "emit_event", "payload": {"event_type": "x"}},
        {"priority": "immediate"},
    ],
)
async def test_same_id_different_content_is_conflict(nc: NATS, agent: str, change: dict[str, Any]) -> None:
    cid = str(uuid.uuid4())
    assert_ok(await submit(nc, agent, command_id=cid))
    assert_error(await submit(nc, agent, command_id=cid, **change), "conflict")
    record = await get_command(nc, cid)
    assert record["payload"] == {"thread_id": "t1", "text": "hi"}


async def test_same_id_for_another_agent_is_conflict(nc: NATS, agent: str) -> None:
    cid = str(uuid.uuid4())
    assert_ok(await submit(nc, agent, command_id=cid))
    assert_error(await submit(nc, agent + "-other", command_id=cid), "conflict")


async def test_queue_full(nc: NATS, agent: str) -> None:
    ids = [await submit_ok(nc, agent) for _ in range(MAX_QUEUED_PER_AGENT)]
    assert_error(await submit(nc, agent), "queue_full")
    # Another agent is unaffected.
    assert_ok(await submit(nc, agent + "-b"))
    # A cancelled command is finished, so there is room again.
    assert_ok(await request(nc, "edge.commands.cancel", {"command_id": ids[0]}))
    assert_ok(await submit(nc, agent))
    assert_error(await submit(nc, agent), "queue_full")


# --- get ----------------------------------------------------------------------------------------


async def test_get_record_shape(nc: NATS, agent: str) -> None:
    payload = {"thread_id": "t9", "text": "hey", "bubble_type": "reflex"}
    cid = await submit_ok(nc, agent, payload=payload, priority="immediate", ttl_s=60)
    record = await get_command(nc, cid)
    assert record["command_id"] == cid
    assert record["edge_agent_id"] == agent
    assert record["command_type"] == "send_message_now"
    assert record["payload"] == payload
    assert record["priority"] == "immediate"
    assert record["ttl_s"] == 60
    assert record["state"] == "queued"
    assert record["attempts"] == 0
    assert record["error"] is None
    created, updated = parse_time(record["created_at"]), parse_time(record["updated_at"])
    assert created.utcoffset() is not None and updated >= created
    assert isinstance(record["history"], list) and len(record["history"]) >= 1
    first = record["history"][0]
    assert first["state"] == "queued"
    parse_time(first["at"])


@pytest.mark.parametrize(("priority", "ttl"), [("normal", 86400), ("immediate", 120)])
async def test_default_ttl_per_priority(nc: NATS, agent: str, priority: str, ttl: int) -> None:
    cid = await submit_ok(nc, agent, priority=priority)
    assert (await get_command(nc, cid))["ttl_s"] == ttl


async def test_default_priority_is_normal(nc: NATS, agent: str) -> None:
    cid = await submit_ok(nc, agent)
    assert (await get_command(nc, cid))["priority"] == "normal"


async def test_get_unknown(nc: NATS) -> None:
    assert_error(await request(nc, "edge.commands.get", {"command_id": str(uuid.uuid4())}), "not_found")


@pytest.mark.parametrize("body", [{"command_id": "nope"}, {"command_id": 7}, {}, {"command_id": ""}])
async def test_get_bad_request(nc: NATS, body: dict[str, Any]) -> None:
    assert_error(await request(nc, "edge.commands.get", body), "invalid_request")


@pytest.mark.parametrize("subject", ["edge.commands.get", "edge.commands.cancel", "edge.agents.get"])
async def test_unusable_body_on_every_subject(nc: NATS, subject: str) -> None:
    for raw in (b"{oops", b"[]"):
        assert_error(await request(nc, subject, raw), "invalid_request")


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_queued(nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent)
    record = assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cid}))
    assert record["command_id"] == cid
    assert record["state"] == "cancelled"
    event = await lifecycle.until(lambda e: e.get("state") == "cancelled")
    assert event["previous_state"] == "queued"
    assert (await get_command(nc, cid))["state"] == "cancelled"
    # Terminal: a second cancel is refused.
    assert_error(await request(nc, "edge.commands.cancel", {"command_id": cid}), "not_cancellable")
    # The agent never connected and has nothing unfinished: the contract does not say whether it
    # is then still known, so either reading is accepted.
    reply = await request(nc, "edge.agents.get", {"edge_agent_id": agent})
    if reply.get("ok"):
        assert reply["queued"] == 0, reply
    else:
        assert_error(reply, "not_found")


async def test_cancel_unknown_and_bad(nc: NATS) -> None:
    assert_error(await request(nc, "edge.commands.cancel", {"command_id": str(uuid.uuid4())}), "not_found")
    assert_error(await request(nc, "edge.commands.cancel", {"command_id": "x.y"}), "invalid_request")
    assert_error(await request(nc, "edge.commands.cancel", {}), "invalid_request")


# --- agents.get ---------------------------------------------------------------------------------


async def test_agent_offline_with_queue(nc: NATS, agent: str) -> None:
    for _ in range(3):
        await submit_ok(nc, agent)
    info = await get_agent(nc, agent)
    assert info["online"] is False
    assert info["queued"] == 3
    for key in ("connected_at", "last_seen", "last_status"):
        assert key in info, info


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_agent_get_bad_id(nc: NATS, bad_id: str) -> None:
    assert_error(await request(nc, "edge.agents.get", {"edge_agent_id": bad_id}), "invalid_request")


async def test_agent_get_missing_id(nc: NATS) -> None:
    assert_error(await request(nc, "edge.agents.get", {}), "invalid_request")


# --- the first lifecycle event -----------------------------------------------------------------


async def test_first_queued_event(nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent, command_type="emit_event", payload={"event_type": "x"})
    subject, event = await lifecycle.next()
    assert subject == f"edge.lifecycle.{agent}.{cid}"
    assert set(event) >= {
        "command_id",
        "edge_agent_id",
        "command_type",
        "state",
        "previous_state",
        "attempt",
        "error",
        "at",
    }, event
    assert event["command_id"] == cid
    assert event["edge_agent_id"] == agent
    assert event["command_type"] == "emit_event"
    assert event["state"] == "queued"
    assert event["previous_state"] is None
    assert event["error"] is None
    assert parse_time(event["at"]).utcoffset() is not None
    json.dumps(event)
