"""`POST /edge/sync`, the HTTP fallback (DESIGN section 3): every status code and the ack rules."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.contract.helpers import (
    ACK_TIMEOUT_S,
    OTHER_SECRET,
    PREVIOUS_SECRET,
    SECRET,
    SYNC_RATE_PER_MIN,
    TOKEN_MAX_AGE_S,
    NatsProc,
    Service,
    Stack,
    assert_error_body,
    gateway_env,
    get_agent,
    get_command,
    make_token,
    state_is,
    submit_ok,
    subscribe,
    sync,
    wait_state,
)


def body_for(agent: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "edge_agent_id": agent,
        "last_command_id": None,
        "pending_events": [],
        "status": {},
    }
    body.update(fields)
    return body


async def test_sync_returns_queued_commands_and_accepts_events(
    stack: Stack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    events = await subscribe(nc, f"edge.events.{agent}")
    normal = await submit_ok(nc, agent, payload={"thread_id": "t", "text": "n"})
    urgent = await submit_ok(nc, agent, priority="immediate", payload={"thread_id": "t", "text": "i"})
    pending = [
        {"event_id": "ev-1", "event_type": "message_sent", "thread_id": "t", "details": {"ok": True}},
        {"event_id": "ev-2", "event_type": "reaction", "details": {}},
    ]
    status, reply, _ = await sync(http, stack.gateway.http, agent, body_for(agent, pending_events=pending))
    assert status == 200, reply
    assert set(reply) >= {"commands", "ack_events", "config_updates"}, reply
    assert isinstance(reply["config_updates"], dict)
    assert sorted(reply["ack_events"]) == ["ev-1", "ev-2"]
    commands = reply["commands"]
    assert [c["command_id"] for c in commands] == [urgent, normal]
    for c in commands:
        assert set(c) >= {"command_id", "command_type", "payload", "priority", "timestamp"}, c
    assert commands[0]["priority"] == "immediate"
    assert commands[1]["payload"] == {"thread_id": "t", "text": "n"}
    # They count as sent.
    await lifecycle.until(state_is(urgent, "sent"))
    await lifecycle.until(state_is(normal, "sent"))
    got = [await events.next() for _ in pending]
    for (subject, event), sent in zip(got, pending, strict=True):
        assert subject == f"edge.events.{agent}"
        assert event["edge_agent_id"] == agent
        assert isinstance(event["at"], str)
        assert event["event"]["event_id"] == sent["event_id"]
        assert event["event"]["event_type"] == sent["event_type"]


async def test_sync_acks_move_commands_on(
    stack: Stack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    cid = await submit_ok(nc, agent)
    status, reply, _ = await sync(http, stack.gateway.http, agent)
    assert status == 200, reply
    assert [c["command_id"] for c in reply["commands"]] == [cid]
    acks = [
        {"command_id": cid, "status": "received", "error": None},
        {"command_id": cid, "status": "executing", "error": None},
        {"command_id": cid, "status": "completed", "error": None, "completed_at": "2030-01-01T00:00:00Z"},
    ]
    status, reply, _ = await sync(
        http, stack.gateway.http, agent, body_for(agent, acks=acks, last_command_id=cid)
    )
    assert status == 200, reply
    assert reply["commands"] == []
    record = await wait_state(nc, cid, "completed")
    assert [h["state"] for h in record["history"]] == ["queued", "sent", "received", "executing", "completed"]


async def test_sync_commands_follow_redelivery_rules(
    stack: Stack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    cid = await submit_ok(nc, agent)
    status, reply, _ = await sync(http, stack.gateway.http, agent)
    assert status == 200 and [c["command_id"] for c in reply["commands"]] == [cid], reply
    first_sent = time.monotonic()
    # Still within the ack timeout: it is "sent", not handed out again.
    status, reply, _ = await sync(http, stack.gateway.http, agent)
    assert status == 200, reply
    if time.monotonic() - first_sent < ACK_TIMEOUT_S * 0.8:
        assert reply["commands"] == [], reply
    # Unacknowledged past the ack timeout: sent again on the next sync.
    await asyncio.sleep(ACK_TIMEOUT_S + 0.3)
    status, reply, _ = await sync(http, stack.gateway.http, agent)
    assert status == 200, reply
    assert [c["command_id"] for c in reply["commands"]] == [cid], reply
    assert (await get_command(nc, cid))["attempts"] == 2


async def test_sync_status_kept_and_published(
    stack: Stack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    statuses = await subscribe(nc, f"edge.status.{agent}")
    body = body_for(agent, status={"battery": 42})
    status, reply, _ = await sync(http, stack.gateway.http, agent, body)
    assert status == 200, reply
    _, event = await statuses.next()
    assert event["edge_agent_id"] == agent
    assert event["status"] == {"battery": 42}
    info = await get_agent(nc, agent)
    assert info["last_status"] == {"battery": 42}


async def test_sync_last_command_id_kept_on_agent_record(
    stack: Stack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    last = str(uuid.uuid4())
    status, reply, _ = await sync(http, stack.gateway.http, agent, body_for(agent, last_command_id=last))
    assert status == 200, reply
    assert (await get_agent(nc, agent)).get("last_command_id") == last


async def test_sync_previous_secret_and_legacy_in_development(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    status, reply, _ = await sync(
        http, stack.gateway.http, agent, token=make_token(agent, secret=PREVIOUS_SECRET)
    )
    assert status == 200, reply
    status, reply, _ = await sync(http, stack.gateway.http, agent, token=SECRET)
    assert status == 200, reply


async def test_sync_legacy_refused_in_production(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    status, reply, _ = await sync(http, stack.prod_gateway.http, agent, token=SECRET)
    assert status == 401, reply
    assert_error_body(reply)
    status, reply, _ = await sync(http, stack.prod_gateway.http, agent)
    assert status == 200, reply


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda a: "", id="empty"),
        pytest.param(lambda a: "garbage", id="garbage"),
        pytest.param(lambda a: make_token(a, secret=OTHER_SECRET), id="bad-signature"),
        pytest.param(lambda a: make_token(a, ts=int(time.time()) - TOKEN_MAX_AGE_S - 60), id="expired"),
        pytest.param(lambda a: make_token(a, ts=int(time.time()) + 400), id="future"),
    ],
)
async def test_sync_401(stack: Stack, http: aiohttp.ClientSession, agent: str, token: Any) -> None:
    status, reply, _ = await sync(http, stack.gateway.http, agent, token=token(agent))
    assert status == 401, reply
    assert_error_body(reply)


async def test_sync_missing_authorization_401(stack: Stack, http: aiohttp.ClientSession, agent: str) -> None:
    async with http.post(
        f"{stack.gateway.http}/edge/sync",
        json=body_for(agent),
        headers={"X-Edge-Agent-Id": agent},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as r:
        assert r.status == 401
        assert_error_body(await r.json())


async def test_sync_token_for_another_agent_403(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    status, reply, _ = await sync(http, stack.gateway.http, agent, token=make_token(agent + "-x"))
    assert status == 403, reply
    assert_error_body(reply)


async def test_sync_header_and_body_ids_disagree_403(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    # Token and body name the agent, the header another one.
    status, reply, _ = await sync(http, stack.gateway.http, agent, header_id=agent + "-x")
    assert status == 403, reply
    assert_error_body(reply)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(
            b'{"edge_agent_id": "AGENT", "pending_events": "nope", "status": {}}', id="events-not-list"
        ),
        pytest.param(
            b'{"edge_agent_id": "AGENT", "last_command_id": null, "pending_events": [{"event_type": "x",'
            b' "details": {}}], "status": {}}',
            id="event-without-id",
        ),
        pytest.param(
            b'{"edge_agent_id": "AGENT", "last_command_id": "not-a-uuid", "pending_events": [],'
            b' "status": {}}',
            id="bad-last-command-id",
        ),
        pytest.param(
            b'{"edge_agent_id": "AGENT", "last_command_id": null, "pending_events": [], "status": "ok"}',
            id="status-not-object",
        ),
        pytest.param(
            b'{"edge_agent_id": "AGENT", "last_command_id": null, "pending_events": [], "status": {},'
            b' "acks": [{"command_id": "6f1c1f9e-53a4-4f83-9d52-3c5d1f5b2a10", "status": "done",'
            b' "error": null}]}',
            id="bad-ack-status",
        ),
    ],
)
async def test_sync_invalid_body_422(
    stack: Stack, http: aiohttp.ClientSession, agent: str, raw: bytes
) -> None:
    status, reply, _ = await sync(http, stack.gateway.http, agent, raw=raw.replace(b"AGENT", agent.encode()))
    assert status == 422, reply
    assert_error_body(reply)


async def test_sync_body_over_1_mib_413(stack: Stack, http: aiohttp.ClientSession, agent: str) -> None:
    body = body_for(agent, status={"blob": "x" * (1024 * 1024 + 100)})
    status, reply, _ = await sync(http, stack.gateway.http, agent, body)
    assert status == 413, reply
    assert_error_body(reply)


async def test_sync_rate_limit_429_with_retry_after(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    for _ in range(SYNC_RATE_PER_MIN):
        status, reply, _ = await sync(http, stack.gateway.http, agent)
        assert status == 200, reply
    status, reply, headers = await sync(http, stack.gateway.http, agent)
    assert status == 429, reply
    assert_error_body(reply)
    retry_after = headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= 60, headers
    # Per agent: another agent is not limited.
    status, reply, _ = await sync(http, stack.gateway.http, agent + "-2")
    assert status == 200, reply


@pytest.fixture(scope="module")
async def lonely_gateway(stack: Stack) -> AsyncIterator[Service]:
    """A gateway on a broker of its own, with no dispatcher anywhere."""
    broker = NatsProc(stack.log_dir)
    broker.start()
    svc = Service("services.edge_gateway", gateway_env(broker.url, UPSTREAM_TIMEOUT_S="1"), stack.log_dir)
    try:
        await broker.ready()
        svc.start()
        await svc.ready()
        yield svc
    finally:
        svc.stop()
        broker.stop()


async def test_sync_503_without_dispatcher(
    lonely_gateway: Service, http: aiohttp.ClientSession, agent: str
) -> None:
    status, reply, _ = await sync(http, lonely_gateway.http, agent)
    assert status == 503, reply
    assert_error_body(reply)


async def test_sync_body_of_exactly_1_mib_is_not_413(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    def body(fill: int) -> bytes:
        event = {"event_id": "big", "event_type": "log", "details": {"blob": "x" * fill}}
        return json.dumps(body_for(agent, pending_events=[event])).encode()

    raw = body(1024 * 1024 - len(body(0)))
    assert len(raw) == 1024 * 1024
    status, reply, _ = await sync(http, stack.gateway.http, agent, raw=raw)
    assert status != 413, reply


async def test_sync_event_without_details_is_422(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    events = [{"event_id": "e1", "event_type": "x"}]
    status, reply, _ = await sync(http, stack.gateway.http, agent, body_for(agent, pending_events=events))
    assert status == 422, reply
