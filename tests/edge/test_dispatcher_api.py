"""The dispatcher's internal NATS API over a real nats-server (DESIGN section 4)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from shared.protocol import subjects
from shared.protocol.errors import (
    Conflict,
    InvalidPayload,
    InvalidRequest,
    NotCancellable,
    NotFound,
    QueueFull,
)
from tests.edge.support import Stack, edge_stack

MSG = {"thread_id": "t1", "text": "hello"}


async def raw(nc: NATS, subject: str, body: Any) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply: dict[str, Any] = json.loads((await nc.request(subject, data, timeout=5)).data)
    return reply


@pytest.fixture
async def stack(nats_url: str) -> Any:
    async with edge_stack(nats_url, max_queued_per_agent=3) as s:
        yield s


async def test_submit_is_queued_and_readable(stack: Stack, agent_id: str) -> None:
    sub = await stack.client.submit(agent_id, "send_message_now", MSG, priority="immediate")
    assert (sub.state, sub.duplicate) == ("queued", False)
    reply = await raw(stack.nc, subjects.COMMANDS_GET, {"command_id": str(sub.command_id)})
    assert reply["ok"] is True
    for field in ("command_id", "edge_agent_id", "command_type", "payload", "priority", "ttl_s", "state"):
        assert field in reply
    for field in ("attempts", "error", "created_at", "updated_at", "history"):
        assert field in reply
    assert reply["ttl_s"] == 120 and reply["state"] == "queued" and reply["attempts"] == 0
    assert [h["state"] for h in reply["history"]] == ["queued"]


async def test_same_id_same_content_is_a_duplicate(stack: Stack, agent_id: str) -> None:
    cid = uuid.uuid4()
    first = await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
    again = await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
    assert first.command_id == again.command_id == cid
    assert (first.duplicate, again.duplicate) == (False, True)


async def test_same_id_other_content_is_a_conflict(stack: Stack, agent_id: str) -> None:
    cid = uuid.uuid4()
    await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
    with pytest.raises(Conflict):
        await stack.client.submit(agent_id, "send_message_now", {**MSG, "text": "other"}, command_id=cid)
    record = await stack.client.get(cid)
    assert record.payload == MSG


@pytest.mark.parametrize(
    "body",
    [
        {"command_type": "reboot", "payload": {}},
        {"command_type": "set_rule", "payload": {}, "priority": "urgent"},
        {"command_type": "set_rule", "payload": {}, "ttl_s": 0},
        {"command_type": "set_rule", "payload": {}, "ttl_s": 604801},
        {"command_type": "set_rule", "payload": {}, "command_id": "not-a-uuid"},
    ],
)
async def test_bad_requests_answer_invalid_request(stack: Stack, agent_id: str, body: dict[str, Any]) -> None:
    reply = await raw(stack.nc, subjects.COMMANDS_SUBMIT, {"edge_agent_id": agent_id, **body})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_request"
    assert reply["error"]["message"]


@pytest.mark.parametrize("bad_id", ["a.b", "*", ">", "a b", "", "x" * 129])
async def test_agent_ids_that_are_not_subject_tokens_are_refused(stack: Stack, bad_id: str) -> None:
    with pytest.raises(InvalidRequest):
        await stack.client.submit(bad_id, "send_message_now", MSG)


async def test_malformed_json_is_invalid_request(stack: Stack) -> None:
    reply = await raw(stack.nc, subjects.COMMANDS_SUBMIT, b"{not json")
    assert reply == {"ok": False, "error": {"code": "invalid_request", "message": reply["error"]["message"]}}


async def test_payload_errors_name_the_field(stack: Stack, agent_id: str) -> None:
    with pytest.raises(InvalidPayload, match="text"):
        await stack.client.submit(agent_id, "send_message_now", {"thread_id": "t"})


async def test_get_and_cancel_of_unknown_command_are_not_found(stack: Stack) -> None:
    with pytest.raises(NotFound):
        await stack.client.get(uuid.uuid4())
    with pytest.raises(NotFound):
        await stack.client.cancel(uuid.uuid4())


async def test_cancel_queued_command_then_cancel_again_is_not_cancellable(
    stack: Stack, agent_id: str
) -> None:
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    record = await stack.client.cancel(sub.command_id)
    assert record.state == "cancelled"
    with pytest.raises(NotCancellable):
        await stack.client.cancel(sub.command_id)


async def test_queue_full_past_the_per_agent_limit(stack: Stack, agent_id: str) -> None:
    for _ in range(3):
        await stack.client.submit(agent_id, "send_message_now", MSG)
    with pytest.raises(QueueFull):
        await stack.client.submit(agent_id, "send_message_now", MSG)
    other = await stack.client.submit(f"{agent_id}-other", "send_message_now", MSG)
    assert other.state == "queued"


async def test_cancelling_frees_room_in_the_queue(stack: Stack, agent_id: str) -> None:
    ids = [(await stack.client.submit(agent_id, "send_message_now", MSG)).command_id for _ in range(3)]
    await stack.client.cancel(ids[0])
    assert (await stack.client.submit(agent_id, "send_message_now", MSG)).state == "queued"


async def test_offline_command_expires_at_its_ttl(stack: Stack, agent_id: str) -> None:
    async with stack.client.lifecycle(edge_agent_id=agent_id) as events:
        sub = await stack.client.submit(agent_id, "send_message_now", MSG, ttl_s=1)
        states = []
        async with asyncio.timeout(10):
            async for event in events:
                states.append((event.previous_state, event.state))
                if event.state == "expired":
                    break
    assert states == [(None, "queued"), ("queued", "expired")]
    assert (await stack.client.get(sub.command_id)).state == "expired"


async def test_agent_never_seen_is_offline_and_an_offline_agent_counts_its_queue(
    stack: Stack, agent_id: str
) -> None:
    unseen = await stack.client.agent(agent_id)
    assert (unseen.online, unseen.queued, unseen.last_seen, unseen.last_status) == (False, 0, None, None)
    await stack.client.submit(agent_id, "send_message_now", MSG)
    info = await stack.client.agent(agent_id)
    assert (info.online, info.queued, info.connected_at) == (False, 1, None)


async def test_resubmitting_an_accepted_command_is_a_duplicate_even_when_the_queue_is_full(
    stack: Stack, agent_id: str
) -> None:
    cid = uuid.uuid4()
    await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
    for _ in range(2):
        await stack.client.submit(agent_id, "send_message_now", MSG)
    again = await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
    assert again.duplicate and again.command_id == cid
