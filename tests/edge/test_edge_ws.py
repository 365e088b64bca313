"""`/edge/ws` with real sockets: delivery, acks, frames, limits, replacement (DESIGN section 3)."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from devtools.natsserver import NatsServer
from services.edge_gateway.gateway import GATEWAY
from shared.protocol import subjects
from tests.edge.support import SECRET, RunningApp, Stack, auth_headers, edge_stack, start_gateway, token
from tests.support import wait_until

MSG = {"thread_id": "t1", "text": "hello"}


@pytest.fixture
async def stack(nats_url: str) -> Any:
    async with edge_stack(nats_url, execution_timeout_s=1.5, max_attempts=3) as s:
        yield s


async def test_full_ack_flow_in_record_and_lifecycle_events(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    cid = uuid.uuid4()
    async with stack.client.lifecycle(command_id=cid) as events:
        await stack.client.submit(agent_id, "send_message_now", MSG, command_id=cid)
        cmd = await agent.command()
        assert cmd == {
            "command_id": str(cid),
            "command_type": "send_message_now",
            "payload": MSG,
            "priority": "normal",
            "timestamp": cmd["timestamp"],
        }
        assert cmd["timestamp"].endswith("Z")
        for status in ("received", "executing", "completed"):
            await agent.ack(str(cid), status)
        seen = []
        async with asyncio.timeout(10):
            async for event in events:
                seen.append((event.previous_state, event.state, event.attempt))
                if event.state == "completed":
                    break
    assert seen == [
        (None, "queued", 0),
        ("queued", "sent", 1),
        ("sent", "received", 1),
        ("received", "executing", 1),
        ("executing", "completed", 1),
    ]
    record = await stack.client.get(cid)
    assert [h.state for h in record.history] == ["queued", "sent", "received", "executing", "completed"]
    assert record.completed_at is not None


async def test_lifecycle_event_shape_on_the_wire(stack: Stack, agent_id: str) -> None:
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put({"subject": msg.subject, **json.loads(msg.data)})

    sub = await stack.nc.subscribe(subjects.lifecycle_of_agent(agent_id), cb=on_msg)
    created = await stack.client.submit(agent_id, "set_rule", {"rule_type": "r", "rule_config": {}})
    async with asyncio.timeout(5):
        event = await got.get()
    await sub.unsubscribe()
    assert event["subject"] == f"edge.lifecycle.{agent_id}.{created.command_id}"
    assert set(event) - {"subject"} == {
        "command_id", "edge_agent_id", "command_type", "state", "previous_state", "attempt", "error", "at",
    }  # fmt: skip
    assert (event["state"], event["previous_state"]) == ("queued", None)


async def test_queued_commands_are_pushed_on_connect_in_priority_order(stack: Stack, agent_id: str) -> None:
    submitted = []
    for priority in ("normal", "immediate", "normal", "immediate"):
        sub = await stack.client.submit(agent_id, "send_message_now", MSG, priority=priority)
        submitted.append((priority, str(sub.command_id)))
    agent = await stack.agent(agent_id)
    received = [(await agent.command())["command_id"] for _ in range(4)]
    expected = [cid for p, cid in submitted if p == "immediate"] + [
        cid for p, cid in submitted if p == "normal"
    ]
    assert received == expected


async def test_ping_is_answered_with_pong(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    await agent.send("ping", {})
    assert (await agent.next())["type"] == "pong"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "reboot", "data": {}}', "unknown_type"),
        ('{"data": {}}', "invalid_frame"),
        ("[1, 2]", "invalid_frame"),
        ('{"type": "command_ack", "data": {"command_id": "x", "status": "received"}}', "invalid_frame"),
        (
            f'{{"type": "command_ack", "data": {{"command_id": "{uuid.uuid4()}", "status": "done"}}}}',
            "invalid_frame",
        ),
        ('{"type": "status", "data": "up"}', "invalid_frame"),
    ],
)
async def test_unusable_frames_get_an_error_and_the_socket_stays_open(
    stack: Stack, agent_id: str, raw: str, code: str
) -> None:
    agent = await stack.agent(agent_id)
    await agent.ws.send_str(raw)
    error = await agent.next("error")
    assert error["data"]["code"] == code and error["data"]["message"]
    await agent.send("ping", {})
    assert (await agent.next())["type"] == "pong"


async def test_too_many_unusable_frames_close_with_1008(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    for _ in range(21):
        await agent.ws.send_str("garbage")
    assert await agent.close_code() == 1008


def _frame_of(size: int) -> str:
    head = '{"type": "reboot", "data": {"blob": "'
    return head + "x" * (size - len(head) - 3) + '"}}'


async def test_frame_of_exactly_256_kib_is_read(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    await agent.ws.send_str(_frame_of(256 * 1024))
    assert (await agent.next("error"))["data"]["code"] == "unknown_type"


async def test_frame_over_256_kib_closes_with_1009(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    await agent.ws.send_str(_frame_of(256 * 1024 + 1))
    assert await agent.close_code() == 1009


async def test_status_is_kept_and_published(stack: Stack, agent_id: str) -> None:
    published: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_status(msg: Any) -> None:
        await published.put(json.loads(msg.data))

    sub = await stack.nc.subscribe(subjects.status(agent_id), cb=on_status)
    agent = await stack.agent(agent_id)
    await agent.send("status", {"battery": 80, "imessage": "ok"})
    async with asyncio.timeout(5):
        event = await published.get()
    await sub.unsubscribe()
    assert event["edge_agent_id"] == agent_id and event["status"] == {"battery": 80, "imessage": "ok"}
    info = await stack.client.agent(agent_id)
    assert info.online and info.last_status == {"battery": 80, "imessage": "ok"} and info.connected_at


async def test_status_over_16_kib_is_refused_and_not_kept(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    await agent.send("status", {"small": True})
    await wait_until(lambda: _last_status(stack, agent_id, {"small": True}), timeout=5)
    await agent.send("status", {"blob": "x" * (17 * 1024)})
    error = await agent.next("error")
    assert error["data"]["code"] == "too_large"
    assert (await stack.client.agent(agent_id)).last_status == {"small": True}


async def _last_status(stack: Stack, agent_id: str, expected: dict[str, Any]) -> bool:
    return (await stack.client.agent(agent_id)).last_status == expected


async def test_acks_for_foreign_unknown_and_finished_commands_change_nothing(
    stack: Stack, agent_id: str
) -> None:
    owner = await stack.agent(agent_id)
    intruder = await stack.agent(f"{agent_id}-x")
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    cid = (await owner.command())["command_id"]
    await intruder.ack(cid, "completed")
    await intruder.ack(str(uuid.uuid4()), "received")
    await owner.ack(cid, "received")
    await stack.wait_state(cid, "received")
    await owner.ack(cid, "completed")
    await stack.wait_state(cid, "completed")
    await owner.ack(cid, "failed")
    await owner.ack(cid, "received")
    # The socket's acks are applied in order, so a ping answered after them means they were handled.
    await owner.send("ping", {})
    await owner.next("pong")
    record = await stack.client.get(sub.command_id)
    assert record.state == "completed" and record.error is None
    assert [h.state for h in record.history] == ["queued", "sent", "received", "completed"]


async def test_unacked_command_is_sent_again_then_undelivered(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    ids = [(await agent.command())["command_id"] for _ in range(3)]
    assert ids == [str(sub.command_id)] * 3
    await stack.wait_state(str(sub.command_id), "failed")
    record = await stack.client.get(sub.command_id)
    assert (record.error, record.attempts) == ("undelivered", 3)


async def test_received_but_never_finished_fails_with_execution_timeout(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    await agent.ack((await agent.command())["command_id"], "received")
    await stack.wait_state(str(sub.command_id), "failed")
    assert (await stack.client.get(sub.command_id)).error == "execution_timeout"


async def test_sent_command_goes_to_the_new_socket_at_once_after_reconnect(
    stack: Stack, agent_id: str
) -> None:
    first = await stack.agent(agent_id)
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    assert (await first.command())["command_id"] == str(sub.command_id)
    await first.close()
    second = await stack.agent(agent_id)
    assert (await second.command(timeout=1.0))["command_id"] == str(sub.command_id)


async def test_command_pulled_on_connect_is_sent_again_after_the_ack_timeout(
    tmp_path: Path, agent_id: str
) -> None:
    # Submitted while offline, its timer sleeps for the offline recheck (a minute); the pull on
    # connect must wake it, or the redelivery would wait that long. A broker of its own, so the
    # timer consumer's counts are this command's alone.
    server = NatsServer(tmp_path)
    server.start()
    try:
        async with edge_stack(server.url, offline_recheck_s=60.0) as stack:
            await _pulled_command_is_sent_again(stack, agent_id)
    finally:
        server.stop()


async def _pulled_command_is_sent_again(stack: Stack, agent_id: str) -> None:
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    js = stack.nc.jetstream()

    async def timer_asleep() -> bool:
        info = await js.consumer_info(subjects.TIMERS_STREAM, subjects.TIMERS_CONSUMER)
        return bool(info.num_pending == 0 and info.num_ack_pending == 1 and info.num_redelivered == 0)

    await wait_until(timer_asleep, timeout=10)
    agent = await stack.agent(agent_id)
    first = await agent.command()
    again = await agent.command(timeout=5)
    assert first["command_id"] == again["command_id"] == str(sub.command_id)


async def test_cancel_of_a_sent_command(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id)
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    await agent.command()
    assert (await stack.client.cancel(sub.command_id)).state == "cancelled"
    await agent.ack(str(sub.command_id), "completed")
    await agent.send("ping", {})
    await agent.next("pong")
    assert (await stack.client.get(sub.command_id)).state == "cancelled"


async def test_new_connection_replaces_the_older_with_4000(stack: Stack, agent_id: str) -> None:
    first = await stack.agent(agent_id)
    second = await stack.agent(agent_id)
    assert await first.close_code() == 4000
    sub = await stack.client.submit(agent_id, "send_message_now", MSG)
    assert (await second.command())["command_id"] == str(sub.command_id)


async def test_replacement_across_two_gateways(stack: Stack, nats_url: str, agent_id: str) -> None:
    other = await start_gateway(nats_url)
    try:
        first = await stack.agent(agent_id)
        second = await stack.agent(agent_id, gateway=other)
        assert await first.close_code() == 4000
        sub = await stack.client.submit(agent_id, "send_message_now", MSG)
        assert (await second.command())["command_id"] == str(sub.command_id)
        assert (await stack.client.agent(agent_id)).online
    finally:
        await second.close()
        await other.stop()


async def test_idle_socket_is_closed_with_1001(nats_url: str, agent_id: str) -> None:
    gateway = await start_gateway(nats_url, idle_timeout_s=0.3)
    try:
        async with edge_stack(nats_url) as stack:
            agent = await stack.agent(agent_id, gateway=gateway)
            assert await agent.close_code() == 1001
    finally:
        await gateway.stop()


async def test_presence_events_for_connect_and_disconnect(stack: Stack, agent_id: str) -> None:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(json.loads(msg.data))

    sub = await stack.nc.subscribe(subjects.presence(agent_id), cb=on_event)
    agent = await stack.agent(agent_id)
    async with asyncio.timeout(5):
        connected = await events.get()
    await agent.close()
    async with asyncio.timeout(5):
        disconnected = await events.get()
    await sub.unsubscribe()
    assert connected["event"] == "connected" and disconnected["event"] == "disconnected"
    assert connected["connection_id"] == disconnected["connection_id"]
    assert {"edge_agent_id", "event", "connection_id", "at"} <= set(connected)
    await wait_until(lambda: _offline(stack, agent_id), timeout=5)


async def _offline(stack: Stack, agent_id: str) -> bool:
    return not (await stack.client.agent(agent_id)).online


# --- The upgrade: refused before it happens, with the contract's status and JSON body ---


async def _upgrade_status(url: str, query: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/edge/ws{query}", headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("bad_id", ["a.b", "*", ">", "a b", "", "x" * 129])
async def test_malformed_agent_id_is_400(stack: Stack, bad_id: str) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": bad_id}
    status, body = await _upgrade_status(stack.gateway.url, f"?edge_agent_id={quote(bad_id)}", headers)
    assert (
        status == 400 and body["error"]["code"] == "invalid_agent_id" and "match" in body["error"]["message"]
    )


@pytest.mark.parametrize("missing", ["X-Edge-Agent-Id", "query"])
async def test_upgrade_without_either_agent_id_is_400(stack: Stack, agent_id: str, missing: str) -> None:
    headers = {"Authorization": f"Bearer {token(agent_id)}", "X-Edge-Agent-Id": agent_id}
    query = f"?edge_agent_id={agent_id}"
    if missing == "query":
        query = ""
    else:
        del headers[missing]
    status, body = await _upgrade_status(stack.gateway.url, query, headers)
    assert status == 400 and body["error"]["code"] == "invalid_agent_id"


@pytest.mark.parametrize(
    "bearer",
    [None, "garbage", "wrong-secret", "badsig", "expired", "future"],
)
async def test_bad_tokens_are_401(stack: Stack, agent_id: str, bearer: str | None) -> None:
    import time

    from shared.auth import generate_edge_token

    tokens = {
        "garbage": "Zm9vOmJhcg==",
        "wrong-secret": "not-the-secret",
        "badsig": generate_edge_token(agent_id, "+1", "other-secret"),
        "expired": token(agent_id, now=time.time() - 90001),
        "future": token(agent_id, now=time.time() + 301),
    }
    headers = {"X-Edge-Agent-Id": agent_id}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {tokens[bearer]}"
    status, body = await _upgrade_status(stack.gateway.url, f"?edge_agent_id={agent_id}", headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_token_for_another_agent_is_403(stack: Stack, agent_id: str) -> None:
    headers = {"X-Edge-Agent-Id": agent_id, "Authorization": f"Bearer {token('someone-else')}"}
    status, body = await _upgrade_status(stack.gateway.url, f"?edge_agent_id={agent_id}", headers)
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_query_and_header_ids_that_disagree_are_403(stack: Stack, agent_id: str) -> None:
    headers = {"X-Edge-Agent-Id": "other", "Authorization": f"Bearer {token(agent_id)}"}
    status, _ = await _upgrade_status(stack.gateway.url, f"?edge_agent_id={agent_id}", headers)
    assert status == 403


async def test_legacy_raw_secret_is_accepted_outside_production(stack: Stack, agent_id: str) -> None:
    agent = await stack.agent(agent_id, bearer=SECRET)
    await agent.send("ping", {})
    assert (await agent.next())["type"] == "pong"


async def test_legacy_raw_secret_is_refused_in_production(nats_url: str, agent_id: str) -> None:
    gateway = await start_gateway(nats_url, environment="production")
    try:
        headers = {"X-Edge-Agent-Id": agent_id, "Authorization": f"Bearer {SECRET}"}
        status, _ = await _upgrade_status(gateway.url, f"?edge_agent_id={agent_id}", headers)
        assert status == 401
        headers["Authorization"] = f"Bearer {token(agent_id)}"
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{gateway.ws_url}?edge_agent_id={agent_id}", headers=headers)
            await ws.close()
    finally:
        await gateway.stop()


async def test_previous_secret_still_works_during_rotation(nats_url: str, agent_id: str) -> None:
    gateway = await start_gateway(nats_url, edge_secret="new-secret", edge_secret_previous=SECRET)
    try:
        async with edge_stack(nats_url) as stack:
            agent = await stack.agent(agent_id, gateway=gateway)
            await agent.send("ping", {})
            assert (await agent.next())["type"] == "pong"
    finally:
        await gateway.stop()


async def test_agent_too_slow_to_read_is_closed_with_1013(nats_url: str, agent_id: str) -> None:
    gateway = await start_gateway(nats_url, send_timeout_s=0.3)
    try:
        # A client that never reads: aiohttp stops reading once its buffer is full, and a small
        # fixed receive buffer keeps the kernel from absorbing megabytes on its behalf.
        connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with edge_stack(nats_url) as stack, aiohttp.ClientSession(connector=connector) as session:
            ws = await session.ws_connect(
                f"{gateway.ws_url}?edge_agent_id={agent_id}", headers=auth_headers(agent_id), max_msg_size=0
            )
            await wait_until(lambda: _online(stack, agent_id), timeout=10)
            big = {"rule_type": "r", "rule_config": {"blob": "x" * 200_000}}
            closes_before = _disconnects(gateway, 1013)
            for _ in range(40):
                await stack.client.submit(agent_id, "set_rule", big)
            await wait_until(lambda: not gateway.app[GATEWAY].open_connections, timeout=30)
            assert _disconnects(gateway, 1013) == closes_before + 1
            await ws.close()
    finally:
        await gateway.stop()


def _disconnects(gateway: RunningApp, code: int) -> float:
    value: float = gateway.app[GATEWAY].metrics.disconnects.labels(code=str(code))._value.get()
    return value


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return sock


async def _online(stack: Stack, agent_id: str) -> bool:
    return (await stack.client.agent(agent_id)).online
