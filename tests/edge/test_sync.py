"""`POST /edge/sync`, the HTTP fallback (DESIGN section 3)."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.protocol import subjects
from tests.edge.support import RunningApp, Stack, auth_headers, edge_stack, start_gateway, token
from tests.support import NatsServer

MSG = {"thread_id": "t1", "text": "hello"}


@pytest.fixture
async def stack(nats_url: str) -> Any:
    async with edge_stack(nats_url) as s:
        yield s


async def sync(
    gateway: RunningApp,
    agent_id: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    payload = (
        raw
        if raw is not None
        else json.dumps(body if body is not None else {"edge_agent_id": agent_id}).encode()
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/edge/sync",
            data=io.BytesIO(payload),
            headers={"Content-Type": "application/json", **(headers or auth_headers(agent_id))},
        ) as r,
    ):
        return r.status, await r.json(), dict(r.headers)


async def test_sync_delivers_queued_commands_and_acks_complete_them(stack: Stack, agent_id: str) -> None:
    immediate = await stack.client.submit(agent_id, "send_message_now", MSG, priority="immediate")
    normal = await stack.client.submit(agent_id, "set_rule", {"rule_type": "r", "rule_config": {}})
    status, body, _ = await sync(stack.gateway, agent_id)
    assert status == 200
    assert [c["command_id"] for c in body["commands"]] == [str(immediate.command_id), str(normal.command_id)]
    assert set(body) == {"commands", "ack_events", "config_updates"}
    assert (await stack.client.get(immediate.command_id)).state == "sent"

    acks = [
        {"command_id": c["command_id"], "status": s, "error": None}
        for c in body["commands"]
        for s in ("received", "executing", "completed")
    ]
    status, body, _ = await sync(
        stack.gateway,
        agent_id,
        {"edge_agent_id": agent_id, "last_command_id": str(normal.command_id), "acks": acks},
    )
    assert status == 200 and body["commands"] == []
    for cid in (immediate.command_id, normal.command_id):
        assert (await stack.client.get(cid)).state == "completed"
    assert (await stack.client.agent(agent_id)).last_command_id == str(normal.command_id)


async def test_unacked_sync_command_is_returned_again_only_after_the_ack_timeout(
    stack: Stack, agent_id: str
) -> None:
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    _, first, _ = await sync(stack.gateway, agent_id)
    _, second, _ = await sync(stack.gateway, agent_id)
    assert [c["command_id"] for c in first["commands"]] == [str(sub.command_id)]
    assert second["commands"] == []
    async with asyncio.timeout(10):
        while True:
            _, later, _ = await sync(stack.gateway, agent_id)
            if later["commands"]:
                break
            await asyncio.sleep(0.1)
    assert later["commands"][0]["command_id"] == str(sub.command_id)
    assert (await stack.client.get(sub.command_id)).attempts == 2


async def test_pending_events_are_published_and_acknowledged(stack: Stack, agent_id: str) -> None:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await got.put(json.loads(msg.data))

    sub = await stack.nc.subscribe(subjects.events(agent_id), cb=on_event)
    events = [
        {"event_id": "e1", "event_type": "message_sent", "thread_id": "t1", "details": {"ok": True}},
        {"event_id": "e2", "event_type": "reaction", "details": {}},
    ]
    status, body, _ = await sync(
        stack.gateway, agent_id, {"edge_agent_id": agent_id, "pending_events": events, "status": {"up": True}}
    )
    assert status == 200 and body["ack_events"] == ["e1", "e2"]
    async with asyncio.timeout(5):
        first, second = await got.get(), await got.get()
    await sub.unsubscribe()
    assert first["edge_agent_id"] == agent_id and first["event"]["event_id"] == "e1"
    assert second["event"]["event_type"] == "reaction" and "at" in second
    assert (await stack.client.agent(agent_id)).last_status == {"up": True}


async def test_sync_auth_errors(stack: Stack, agent_id: str) -> None:
    status, body, _ = await sync(stack.gateway, agent_id, headers={"X-Edge-Agent-Id": agent_id})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, _ = await sync(stack.gateway, agent_id, headers=auth_headers(agent_id, token("someone-else")))
    assert status == 403
    status, _, _ = await sync(stack.gateway, agent_id, body={"edge_agent_id": "someone-else"})
    assert status == 403


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"edge_agent_id": "%s", "last_command_id": "nope"}',
        b'{"edge_agent_id": "%s", "acks": [{"command_id": "x", "status": "received"}]}',
        b'{"edge_agent_id": "%s", "pending_events": [{"event_type": "no id"}]}',
        b'{"edge_agent_id": "%s", "status": "up"}',
    ],
)
async def test_invalid_body_is_422(stack: Stack, agent_id: str, body: bytes) -> None:
    raw = body.replace(b"%s", agent_id.encode())
    status, reply, _ = await sync(stack.gateway, agent_id, raw=raw)
    assert status == 422 and reply["error"]["message"]


async def test_body_over_1_mib_is_413(stack: Stack, agent_id: str) -> None:
    big = {"edge_agent_id": agent_id, "status": {"blob": "x" * (1024 * 1024)}}
    status, reply, _ = await sync(stack.gateway, agent_id, big)
    assert status == 413 and reply["error"]["code"] == "too_large"


async def test_rate_limit_answers_429_with_retry_after(nats_url: str, agent_id: str) -> None:
    gateway = await start_gateway(nats_url, sync_rate_per_min=3)
    try:
        async with edge_stack(nats_url):
            statuses = [(await sync(gateway, agent_id))[0] for _ in range(3)]
            status, reply, headers = await sync(gateway, agent_id)
            other, _, _ = await sync(gateway, f"{agent_id}-other")
    finally:
        await gateway.stop()
    assert statuses == [200, 200, 200]
    assert status == 429 and reply["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert other == 200


async def test_sync_without_a_dispatcher_is_503(tmp_path: Path, agent_id: str) -> None:
    server = NatsServer(tmp_path)
    server.start()
    try:
        gateway = await start_gateway(server.url, upstream_timeout_s=0.5)
        try:
            status, reply, _ = await sync(gateway, agent_id)
        finally:
            await gateway.stop()
    finally:
        server.stop()
    assert status == 503 and reply["error"]["code"]


async def test_acks_sent_while_the_dispatcher_is_away_are_applied_when_it_returns(
    nats_url: str, agent_id: str
) -> None:
    async with edge_stack(nats_url) as stack:
        sub = await stack.client.submit(agent_id, "send_message_now", MSG)
        _, body, _ = await sync(stack.gateway, agent_id)
        cid = body["commands"][0]["command_id"]
        await stack.dispatcher.stop()
        gateway = await start_gateway(nats_url, upstream_timeout_s=0.5)
        try:
            acks = [{"command_id": cid, "status": "completed", "error": None}]
            # The ack is stored durably even though the pull that follows cannot be answered.
            status, _, _ = await sync(gateway, agent_id, {"edge_agent_id": agent_id, "acks": acks})
            assert status == 503
        finally:
            await gateway.stop()
        from tests.edge.support import start_dispatcher

        stack.dispatcher = await start_dispatcher(nats_url)
        await stack.wait_state(str(sub.command_id), "completed")
    assert uuid.UUID(cid) == sub.command_id
