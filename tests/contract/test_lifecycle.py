"""The command lifecycle end to end (DESIGN sections 3 and 4): acks, order, redelivery, timers."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.contract.helpers import (
    ACK_TIMEOUT_S,
    EXECUTION_TIMEOUT_S,
    MAX_ATTEMPTS,
    MAX_QUEUED_PER_AGENT,
    EdgeSocket,
    JsonObj,
    Stack,
    assert_error,
    assert_ok,
    edge_socket,
    get_agent,
    get_command,
    request,
    state_is,
    submit,
    submit_ok,
    subscribe,
    wait_state,
)


def parse_utc(value: Any) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, value  # type: ignore[union-attr]
    return parsed


async def recv_command(ws: EdgeSocket, timeout: float = 5.0) -> JsonObj:
    frame = await ws.recv_type("command", timeout)
    data = frame["data"]
    assert isinstance(data, dict), frame
    return data


async def test_command_frame_shape_and_full_ack_flow(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    payload = {"thread_id": "t1", "text": "hello there", "bubble_type": "reflex", "x": 1}
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.ping_pong()
        before = datetime.now(UTC)
        cid = await submit_ok(nc, agent, payload=payload, priority="immediate")
        cmd = await recv_command(ws)
        assert set(cmd) >= {"command_id", "command_type", "payload", "priority", "timestamp"}, cmd
        assert cmd["command_id"] == cid
        uuid.UUID(cmd["command_id"])
        assert cmd["command_type"] == "send_message_now"
        assert cmd["payload"] == payload
        assert cmd["priority"] == "immediate"
        stamp = parse_utc(cmd["timestamp"])
        assert abs((stamp - before).total_seconds()) < 60
        await lifecycle.until(state_is(cid, "sent"))

        await ws.ack(cid, "received")
        await lifecycle.until(state_is(cid, "received"))
        await ws.ack(cid, "executing")
        await lifecycle.until(state_is(cid, "executing"))
        await ws.ack(cid, "completed", completed_at=datetime.now(UTC).isoformat())
        await lifecycle.until(state_is(cid, "completed"))

    events = [e for _, e in lifecycle.seen if e["command_id"] == cid]
    states = [e["state"] for e in events]
    assert states == ["queued", "sent", "received", "executing", "completed"], events
    assert [e["previous_state"] for e in events] == [None, "queued", "sent", "received", "executing"]
    for e in events:
        assert e["edge_agent_id"] == agent
        assert e["command_type"] == "send_message_now"
        assert e["error"] is None
        parse_time_ok = datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
        assert parse_time_ok.utcoffset() is not None
    assert events[1]["attempt"] == 1

    record = await get_command(nc, cid)
    assert record["state"] == "completed"
    assert record["attempts"] == 1
    assert record["error"] is None
    assert [h["state"] for h in record["history"]] == states


async def test_failed_ack_keeps_error(stack: Stack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        await ws.ack(cid, "received")
        await ws.ack(cid, "failed", error="chat not found", completed_at=datetime.now(UTC).isoformat())
        record = await wait_state(nc, cid, "failed")
        assert record["error"] == "chat not found"


async def test_ack_never_moves_backwards(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        await ws.ack(cid, "executing")
        await wait_state(nc, cid, "executing")
        await ws.ack(cid, "received")
        await ws.ping_pong()
        # Terminal, then an attempt to reopen or change it.
        await ws.ack(cid, "completed")
        await wait_state(nc, cid, "completed")
        for status in ("received", "executing", "failed"):
            await ws.ack(cid, status, error="late" if status == "failed" else None)
        await ws.ping_pong()
        await lifecycle.quiet(0.3)
    record = await get_command(nc, cid)
    assert record["state"] == "completed"
    assert record["error"] is None
    states = [e["state"] for _, e in lifecycle.seen if e["command_id"] == cid]
    assert states == ["queued", "sent", "executing", "completed"], states


async def test_ack_for_foreign_unknown_and_terminal_commands_changes_nothing(
    stack: Stack, nc: NATS, agent: str
) -> None:
    other = agent + "-victim"
    victim_cid = await submit_ok(nc, other)
    cancelled_cid = await submit_ok(nc, agent, command_type="emit_event", payload={"event_type": "x"})
    assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cancelled_cid}))
    lifecycle = await subscribe(nc, "edge.lifecycle.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        for status in ("received", "executing", "completed", "failed"):
            await ws.ack(victim_cid, status, error="x" if status == "failed" else None)
            await ws.ack(str(uuid.uuid4()), status, error=None)
            await ws.ack(cancelled_cid, status, error=None)
        # The socket is still usable: none of these is a reason to close it.
        await ws.ping_pong()
        assert await lifecycle.quiet(0.5) == []
    assert (await get_command(nc, victim_cid))["state"] == "queued"
    assert (await get_command(nc, cancelled_cid))["state"] == "cancelled"


async def test_queued_commands_pushed_on_connect_in_priority_order(
    stack: Stack, nc: NATS, agent: str
) -> None:
    plan = ["normal", "normal", "immediate", "normal", "immediate"]
    ids = [
        await submit_ok(nc, agent, priority=p, payload={"thread_id": "t", "text": f"m{i}"})
        for i, p in enumerate(plan)
    ]
    expected = [ids[2], ids[4], ids[0], ids[1], ids[3]]
    async with edge_socket(stack.gateway.ws, agent) as ws:
        got = [(await recv_command(ws))["command_id"] for _ in plan]
        for cid in got:
            await ws.ack(cid, "received")
        assert got == expected
        for cid in expected:
            await wait_state(nc, cid, "received")


# Was a deviation: timers fired an ack wait late (nats-server's nak delay) or slept through a pull.
async def test_redelivery_with_backoff_then_undelivered(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        arrivals: list[float] = []
        for _ in range(MAX_ATTEMPTS):
            cmd = await recv_command(ws, timeout=ACK_TIMEOUT_S * 2**MAX_ATTEMPTS + 3)
            assert cmd["command_id"] == cid
            arrivals.append(time.monotonic())
        event = await lifecycle.until(state_is(cid, "failed"), timeout=ACK_TIMEOUT_S * 2**MAX_ATTEMPTS + 3)
        failed_at = time.monotonic()
        assert event["error"] == "undelivered"
        assert event["previous_state"] == "sent"
        # Exactly MAX_ATTEMPTS sends, no more.
        assert await lifecycle.quiet(ACK_TIMEOUT_S) == []
    gaps = [b - a for a, b in itertools.pairwise(arrivals)] + [failed_at - arrivals[-1]]
    # The wait doubles: ACK_TIMEOUT_S, 2x, 4x ... (generous bounds for a busy machine).
    for i, gap in enumerate(gaps):
        want = ACK_TIMEOUT_S * 2**i
        assert want * 0.8 <= gap <= want + 1.5, (i, gaps)
    record = await get_command(nc, cid)
    assert record["state"] == "failed"
    assert record["error"] == "undelivered"
    assert record["attempts"] == MAX_ATTEMPTS
    sent_events = [e for _, e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"]
    assert [e["attempt"] for e in sent_events] == list(range(1, MAX_ATTEMPTS + 1)), sent_events


async def test_any_ack_stops_redelivery(stack: Stack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        await ws.ack(cid, "received")
        await wait_state(nc, cid, "received")
        # Nothing is sent again after the ack timeout has passed.
        start = time.monotonic()
        while time.monotonic() - start < ACK_TIMEOUT_S * 2:
            await ws.ping_pong()
        assert (await get_command(nc, cid))["attempts"] == 1


async def test_expiry_of_queued_command(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent, ttl_s=1)
    event = await lifecycle.until(state_is(cid, "expired"), timeout=6)
    assert event["previous_state"] == "queued"
    assert (await get_command(nc, cid))["state"] == "expired"
    # A later connect does not push it.
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.ping_pong()
        assert await lifecycle.quiet(0.3) == []


async def test_expiry_of_sent_command(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent, ttl_s=1)
        await recv_command(ws)
        event = await lifecycle.until(state_is(cid, "expired"), timeout=6)
        assert event["previous_state"] == "sent"


async def test_received_but_never_finished_fails_with_execution_timeout(
    stack: Stack, nc: NATS, agent: str
) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        await ws.ack(cid, "received")
        await lifecycle.until(state_is(cid, "received"))
        started = time.monotonic()
        await ws.ack(cid, "executing")
        event = await lifecycle.until(state_is(cid, "failed"), timeout=EXECUTION_TIMEOUT_S + 5)
        assert time.monotonic() - started >= EXECUTION_TIMEOUT_S * 0.5
        assert event["error"] == "execution_timeout"
        # Too late: a completion after the timeout changes nothing.
        await ws.ack(cid, "completed")
        await ws.ping_pong()
    record = await get_command(nc, cid)
    assert record["state"] == "failed"
    assert record["error"] == "execution_timeout"


async def test_cancel_sent_command(stack: Stack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        await wait_state(nc, cid, "sent")
        record = assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cid}))
        assert record["state"] == "cancelled"
        # A late ack changes nothing.
        await ws.ack(cid, "received")
        await ws.ping_pong()
        assert (await get_command(nc, cid))["state"] == "cancelled"


@pytest.mark.parametrize("reached", ["received", "executing", "completed"])
async def test_cancel_after_received_is_not_cancellable(
    stack: Stack, nc: NATS, agent: str, reached: str
) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
        for status in ("received", "executing", "completed"):
            await ws.ack(cid, status)
            if status == reached:
                break
        await wait_state(nc, cid, reached)
        assert_error(await request(nc, "edge.commands.cancel", {"command_id": cid}), "not_cancellable")
        assert (await get_command(nc, cid))["state"] == reached
        await ws.ack(cid, "completed")


async def test_duplicate_submit_of_delivered_command_reports_current_state(
    stack: Stack, nc: NATS, agent: str
) -> None:
    cid = str(uuid.uuid4())
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await submit_ok(nc, agent, command_id=cid)
        await recv_command(ws)
        await ws.ack(cid, "received")
        await wait_state(nc, cid, "received")
        reply = assert_ok(
            await request(
                nc,
                "edge.commands.submit",
                {
                    "edge_agent_id": agent,
                    "command_type": "send_message_now",
                    "payload": {"thread_id": "t1", "text": "hi"},
                    "command_id": cid,
                },
            )
        )
        assert reply["duplicate"] is True
        assert reply["state"] == "received"
        # Not delivered a second time.
        await ws.ping_pong()
        await ws.ack(cid, "completed")
        await wait_state(nc, cid, "completed")


async def test_agent_record_while_online(stack: Stack, nc: NATS, agent: str) -> None:
    await submit_ok(nc, agent, ttl_s=30)
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cmd = await recv_command(ws)
        info = await get_agent(nc, agent)
        assert info["online"] is True
        parse_utc(info["connected_at"])
        await ws.ack(cmd["command_id"], "completed")
        await wait_state(nc, cmd["command_id"], "completed")
        assert (await get_agent(nc, agent))["queued"] == 0


async def test_unacked_command_sent_again_after_reconnect(stack: Stack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await recv_command(ws)
    # Disconnected without any ack; at least once means it comes again on the next socket.
    async with edge_socket(stack.gateway.ws, agent) as ws:
        again = await recv_command(ws, timeout=ACK_TIMEOUT_S * 4 + 3)
        assert again["command_id"] == cid
        await ws.ack(cid, "completed")
        await wait_state(nc, cid, "completed")
    sent = [e["attempt"] for _, e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"]
    assert sent == [1, 2], lifecycle.seen


async def test_queue_full_counts_every_unfinished_command(stack: Stack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        ids = [await submit_ok(nc, agent) for _ in range(MAX_QUEUED_PER_AGENT)]
        for _ in ids:
            await ws.ack((await recv_command(ws))["command_id"], "received")
        for cid in ids:
            await wait_state(nc, cid, "received")
        assert_error(await submit(nc, agent), "queue_full")
        await ws.ack(ids[0], "completed")
        await wait_state(nc, ids[0], "completed")
        extra = await submit_ok(nc, agent)
        await ws.ack((await recv_command(ws))["command_id"], "completed")
        for cid in [*ids[1:], extra]:
            await ws.ack(cid, "completed")


async def test_two_dispatcher_replicas_change_each_record_once(stack: Stack, nc: NATS, agent: str) -> None:
    """A timer that fires on two replicas at once changes the record once."""
    from tests.contract.helpers import dispatcher_env

    second = await stack.start_service("services.command_dispatcher", dispatcher_env(stack.nats.url))
    try:
        lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
        async with edge_socket(stack.gateway.ws, agent) as ws:
            undelivered = await submit_ok(nc, agent)
            expiring = await submit_ok(nc, agent + "-off", ttl_s=1)
            frames = 0
            bound = ACK_TIMEOUT_S * 2**MAX_ATTEMPTS + 4
            await lifecycle.until(state_is(undelivered, "failed"), timeout=bound)
            while True:
                try:
                    frame = await ws.recv(timeout=0.3)
                except TimeoutError:
                    break
                frames += frame.get("type") == "command"
            # Frames read after the failure were queued before it; count them too.
            assert frames <= MAX_ATTEMPTS
        await wait_state(nc, expiring, "expired", timeout=6)
        await lifecycle.quiet(0.3)
        events = [e for _, e in lifecycle.seen if e["command_id"] == undelivered]
        assert [e["state"] for e in events] == ["queued"] + ["sent"] * MAX_ATTEMPTS + ["failed"], events
        assert [e["attempt"] for e in events if e["state"] == "sent"] == list(range(1, MAX_ATTEMPTS + 1))
        record = await get_command(nc, undelivered)
        assert record["attempts"] == MAX_ATTEMPTS
        assert [h["state"] for h in record["history"]].count("failed") == 1
        expired = await get_command(nc, expiring)
        assert [h["state"] for h in expired["history"]] == ["queued", "expired"]
    finally:
        second.stop()


async def _undelivered_scenario(stack: Stack, nc: NATS, misses: list[str]) -> None:
    agent = f"ct-rd-{uuid.uuid4().hex[:10]}"
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        started = time.monotonic()
        # Sends at 0, A, 3A (A = ACK_TIMEOUT_S), failed at 7A: each step has 2.5 s of slack.
        try:
            for _ in range(MAX_ATTEMPTS):
                await recv_command(ws, timeout=ACK_TIMEOUT_S * 2 ** (MAX_ATTEMPTS - 1) + 2.5)
            await lifecycle.until(
                state_is(cid, "failed"), timeout=ACK_TIMEOUT_S * 2 ** (MAX_ATTEMPTS - 1) + 2.5
            )
        except TimeoutError:
            record = await get_command(nc, cid)
            misses.append(
                f"{cid}: state {record['state']} attempts {record['attempts']} "
                f"after {time.monotonic() - started:.1f}s"
            )


# Was a deviation: timers fired an ack wait late (nats-server's nak delay) or slept through a pull.
async def test_redelivery_timers_fire_under_light_concurrency(stack: Stack, nc: NATS) -> None:
    """The redelivery rule holds for every command, not just one at a time (up to 3 rounds of 20)."""
    misses: list[str] = []
    for _ in range(3):
        await asyncio.gather(*[_undelivered_scenario(stack, nc, misses) for _ in range(20)])
        if misses:
            break
    assert misses == []
