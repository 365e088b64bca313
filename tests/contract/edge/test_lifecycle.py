"""The command lifecycle end to end (DESIGN sections 3 and 4): acks, order, redelivery, timers."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.harness.bus import assert_error, assert_ok, request, subscribe
from tests.harness.edge import (
    ACK_TIMEOUT_S,
    EXECUTION_TIMEOUT_S,
    MAX_ATTEMPTS,
    MAX_QUEUED_PER_AGENT,
    EdgeStack,
    ack,
    dispatcher_env,
    edge_socket,
    get_agent,
    get_command,
    submit,
    submit_ok,
    sync,
    wait_state,
)

# How long the last redelivery of an unacknowledged command can take, with slack for a busy machine.
UNDELIVERED_WITHIN_S = ACK_TIMEOUT_S * 2**MAX_ATTEMPTS + 3


def parse_utc(value: Any) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, value  # type: ignore[union-attr]
    return parsed


async def test_command_frame_shape_and_full_ack_flow(stack: EdgeStack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    payload = {"thread_id": "t1", "text": "hello there", "bubble_type": "reflex", "x": 1}
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.ping_pong()
        before = datetime.now(UTC)
        cid = await submit_ok(nc, agent, payload=payload, priority="immediate")
        cmd = await ws.expect("command")
        assert set(cmd) >= {"command_id", "command_type", "payload", "priority", "timestamp"}, cmd
        assert (cmd["command_id"], cmd["command_type"], cmd["payload"], cmd["priority"]) == (
            cid,
            "send_message_now",
            payload,
            "immediate",
        )
        uuid.UUID(cmd["command_id"])
        assert abs((parse_utc(cmd["timestamp"]) - before).total_seconds()) < 60
        await lifecycle.next(command_id=cid, state="sent")
        for status in ("received", "executing", "completed"):
            await ack(
                ws,
                cid,
                status,
                **({"completed_at": datetime.now(UTC).isoformat()} if status == "completed" else {}),
            )
            await lifecycle.next(command_id=cid, state=status)

    events = [e for e in lifecycle.seen if e["command_id"] == cid]
    states = [e["state"] for e in events]
    assert states == ["queued", "sent", "received", "executing", "completed"], events
    assert [e["previous_state"] for e in events] == [None, "queued", "sent", "received", "executing"]
    assert [e["attempt"] for e in events[1:]] == [1, 1, 1, 1]
    for e in events:
        assert (e["edge_agent_id"], e["command_type"], e["error"]) == (agent, "send_message_now", None)
        parse_utc(e["at"])
    record = await get_command(nc, cid)
    assert (record["state"], record["attempts"], record["error"]) == ("completed", 1, None)
    assert [h["state"] for h in record["history"]] == states


async def test_failed_ack_keeps_error(stack: EdgeStack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        await ack(ws, cid, "received")
        await ack(ws, cid, "failed", error="chat not found", completed_at=datetime.now(UTC).isoformat())
        assert (await wait_state(nc, cid, "failed"))["error"] == "chat not found"


async def test_ack_never_moves_backwards(stack: EdgeStack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        await ack(ws, cid, "executing")
        await wait_state(nc, cid, "executing")
        await ack(ws, cid, "received")
        await ws.ping_pong()
        # Terminal, then an attempt to reopen or change it.
        await ack(ws, cid, "completed")
        await wait_state(nc, cid, "completed")
        for status in ("received", "executing", "failed"):
            await ack(ws, cid, status, error="late" if status == "failed" else None)
        await ws.ping_pong()
        await lifecycle.quiet(0.3)
    record = await get_command(nc, cid)
    assert (record["state"], record["error"]) == ("completed", None)
    states = [e["state"] for e in lifecycle.seen if e["command_id"] == cid]
    assert states == ["queued", "sent", "executing", "completed"], states


async def test_ack_for_foreign_unknown_and_terminal_commands_changes_nothing(
    stack: EdgeStack, nc: NATS, agent: str
) -> None:
    victim = agent + "-victim"
    cancelled_cid = await submit_ok(nc, agent, command_type="emit_event", payload={"event_type": "x"})
    assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cancelled_cid}))
    async with edge_socket(stack.gateway.ws, victim) as owner, edge_socket(stack.gateway.ws, agent) as ws:
        victim_cid = await submit_ok(nc, victim)
        await owner.expect("command")  # `sent` to its owner
        await wait_state(nc, victim_cid, "sent")
        lifecycle = await subscribe(nc, "edge.lifecycle.>")
        for status in ("received", "executing", "completed", "failed"):
            await ack(ws, victim_cid, status, error="x" if status == "failed" else None)
            await ack(ws, str(uuid.uuid4()), status)
            await ack(ws, cancelled_cid, status)
        await ws.ping_pong()  # none of these is a reason to close the socket
        assert await lifecycle.quiet(0.5) == []
        assert (await get_command(nc, victim_cid))["state"] == "sent"
        assert (await get_command(nc, cancelled_cid))["state"] == "cancelled"
        await ack(owner, victim_cid, "completed")


async def test_an_agent_is_never_handed_another_agents_command(
    stack: EdgeStack, nc: NATS, http: aiohttp.ClientSession, agent: str
) -> None:
    owner = agent + "-owner"
    async with edge_socket(stack.gateway.ws, agent) as bystander:
        queued = await submit_ok(nc, owner)  # the owner is offline: it waits for the owner
        await bystander.ping_pong()
        _, reply, _ = await sync(http, stack.gateway.http, agent)
        assert reply["commands"] == []
        async with edge_socket(stack.gateway.ws, owner) as ws:
            assert (await ws.expect("command"))["command_id"] == queued
            sent = await submit_ok(nc, owner)  # the owner is online: pushed to it at once
            assert (await ws.expect("command"))["command_id"] == sent
        assert await bystander.quiet(0.5, "command") == []
        assert not [f for f in bystander.frames if f["type"] == "command"]


async def test_queued_commands_pushed_on_connect_in_priority_order(
    stack: EdgeStack, nc: NATS, agent: str
) -> None:
    plan = ["normal", "normal", "immediate", "normal", "immediate"]
    ids = [
        await submit_ok(nc, agent, priority=p, payload={"thread_id": "t", "text": f"m{i}"})
        for i, p in enumerate(plan)
    ]
    async with edge_socket(stack.gateway.ws, agent) as ws:
        got = [(await ws.expect("command"))["command_id"] for _ in plan]
        assert got == [ids[2], ids[4], ids[0], ids[1], ids[3]]
        for cid in got:
            await ack(ws, cid, "received")
        for cid in got:
            await wait_state(nc, cid, "received")


# Was a deviation: timers fired an ack wait late (nats-server's nak delay) or slept through a pull.
async def test_redelivery_with_backoff_then_undelivered(stack: EdgeStack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        arrivals: list[float] = []
        for _ in range(MAX_ATTEMPTS):
            assert (await ws.expect("command", UNDELIVERED_WITHIN_S))["command_id"] == cid
            arrivals.append(time.monotonic())
        event = await lifecycle.next(UNDELIVERED_WITHIN_S, command_id=cid, state="failed")
        failed_at = time.monotonic()
        assert (event["error"], event["previous_state"]) == ("undelivered", "sent")
        assert await lifecycle.quiet(ACK_TIMEOUT_S) == []  # exactly MAX_ATTEMPTS sends, no more
    gaps = [b - a for a, b in itertools.pairwise(arrivals)] + [failed_at - arrivals[-1]]
    for i, gap in enumerate(gaps):  # the wait doubles: ACK_TIMEOUT_S, 2x, 4x ...
        assert ACK_TIMEOUT_S * 2**i * 0.8 <= gap <= ACK_TIMEOUT_S * 2**i + 1.5, (i, gaps)
    record = await get_command(nc, cid)
    assert (record["state"], record["error"], record["attempts"]) == ("failed", "undelivered", MAX_ATTEMPTS)
    sent = [e["attempt"] for e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"]
    assert sent == list(range(1, MAX_ATTEMPTS + 1))


async def test_any_ack_stops_redelivery(stack: EdgeStack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        await ack(ws, cid, "received")
        await wait_state(nc, cid, "received")
        assert await ws.quiet(ACK_TIMEOUT_S * 2, "command") == []  # nothing sent again
        assert (await get_command(nc, cid))["attempts"] == 1


@pytest.mark.parametrize("connected", [False, True], ids=["queued", "sent"])
async def test_expiry_of_unfinished_command(stack: EdgeStack, nc: NATS, agent: str, connected: bool) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    if connected:
        async with edge_socket(stack.gateway.ws, agent) as ws:
            cid = await submit_ok(nc, agent, ttl_s=1)
            await ws.expect("command")
            event = await lifecycle.next(6, command_id=cid, state="expired")
    else:
        cid = await submit_ok(nc, agent, ttl_s=1)
        event = await lifecycle.next(6, command_id=cid, state="expired")
    assert event["previous_state"] == ("sent" if connected else "queued")
    assert (await get_command(nc, cid))["state"] == "expired"
    async with edge_socket(stack.gateway.ws, agent) as ws:  # a later connect does not push it
        await ws.ping_pong()
        assert await ws.quiet(0.3, "command") == []


@pytest.mark.parametrize("last_ack", ["received", "executing"])
async def test_unfinished_command_fails_with_execution_timeout(
    stack: EdgeStack, nc: NATS, agent: str, last_ack: str
) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        started = time.monotonic()
        await ack(ws, cid, "received")
        if last_ack == "executing":
            await lifecycle.next(command_id=cid, state="received")
            await ack(ws, cid, "executing")
        event = await lifecycle.next(EXECUTION_TIMEOUT_S + 5, command_id=cid, state="failed")
        assert time.monotonic() - started >= EXECUTION_TIMEOUT_S * 0.8
        assert (event["error"], event["previous_state"]) == ("execution_timeout", last_ack)
        await ack(ws, cid, "completed")  # too late: changes nothing
        await ws.ping_pong()
    record = await get_command(nc, cid)
    assert (record["state"], record["error"]) == ("failed", "execution_timeout")


async def test_cancel_sent_command(stack: EdgeStack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        await wait_state(nc, cid, "sent")
        assert (
            assert_ok(await request(nc, "edge.commands.cancel", {"command_id": cid}))["state"] == "cancelled"
        )
        await ack(ws, cid, "received")  # a late ack changes nothing
        await ws.ping_pong()
        assert (await get_command(nc, cid))["state"] == "cancelled"


@pytest.mark.parametrize("reached", ["received", "executing", "completed"])
async def test_cancel_after_received_is_not_cancellable(
    stack: EdgeStack, nc: NATS, agent: str, reached: str
) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
        steps = ("received", "executing", "completed")
        for status in steps[: steps.index(reached) + 1]:
            await ack(ws, cid, status)
        await wait_state(nc, cid, reached)
        assert_error(await request(nc, "edge.commands.cancel", {"command_id": cid}), "not_cancellable")
        assert (await get_command(nc, cid))["state"] == reached
        await ack(ws, cid, "completed")


async def test_duplicate_submit_of_delivered_command_reports_current_state(
    stack: EdgeStack, nc: NATS, agent: str
) -> None:
    cid = str(uuid.uuid4())
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await submit_ok(nc, agent, command_id=cid)
        await ws.expect("command")
        await ack(ws, cid, "received")
        await wait_state(nc, cid, "received")
        reply = assert_ok(await submit(nc, agent, command_id=cid))
        assert (reply["duplicate"], reply["state"]) == (True, "received")
        assert await ws.quiet(0.3, "command") == []  # not delivered a second time
        await ack(ws, cid, "completed")
        await wait_state(nc, cid, "completed")


async def test_agent_record_while_online(stack: EdgeStack, nc: NATS, agent: str) -> None:
    await submit_ok(nc, agent, ttl_s=30)
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cmd = await ws.expect("command")
        info = await get_agent(nc, agent)
        assert info["online"] is True
        parse_utc(info["connected_at"])
        await ack(ws, cmd["command_id"], "completed")
        await wait_state(nc, cmd["command_id"], "completed")
        assert (await get_agent(nc, agent))["queued"] == 0


async def test_unacked_command_sent_again_after_reconnect(stack: EdgeStack, nc: NATS, agent: str) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        await ws.expect("command")
    # Disconnected without any ack; at least once means it comes again on the next socket.
    async with edge_socket(stack.gateway.ws, agent) as ws:
        assert (await ws.expect("command", ACK_TIMEOUT_S * 4 + 3))["command_id"] == cid
        await ack(ws, cid, "completed")
        await wait_state(nc, cid, "completed")
    assert [e["attempt"] for e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"] == [1, 2]


async def test_command_pulled_on_connect_is_sent_again_after_the_ack_timeout(
    stack: EdgeStack, nc: NATS, agent: str
) -> None:
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent)  # the agent is offline: it waits, queued
    async with edge_socket(stack.gateway.ws, agent) as ws:
        assert (await ws.expect("command"))["command_id"] == cid
        # Not acked: sent again once the ack timeout has passed, on the same socket.
        assert (await ws.expect("command", ACK_TIMEOUT_S * 2 + 3))["command_id"] == cid
        await ack(ws, cid, "completed")
        await wait_state(nc, cid, "completed")
    assert [e["attempt"] for e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"] == [1, 2]


async def test_queue_full_counts_every_unfinished_command(stack: EdgeStack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        ids = [await submit_ok(nc, agent) for _ in range(MAX_QUEUED_PER_AGENT)]
        for _ in ids:
            await ack(ws, (await ws.expect("command"))["command_id"], "received")
        for cid in ids:
            await wait_state(nc, cid, "received")
        assert_error(await submit(nc, agent), "queue_full")
        await ack(ws, ids[0], "completed")
        await wait_state(nc, ids[0], "completed")
        extra = await submit_ok(nc, agent)
        assert (await ws.expect("command"))["command_id"] == extra
        for cid in [*ids[1:], extra]:
            await ack(ws, cid, "completed")


async def test_two_dispatcher_replicas_change_each_record_once(
    stack: EdgeStack, nc: NATS, agent: str
) -> None:
    """A timer that fires on two replicas at once changes the record once: a command reaches the
    agent once per attempt (once in all when it is acked in time)."""
    second = await stack.start_service("services.command_dispatcher", dispatcher_env(stack.broker.url))
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    try:
        async with edge_socket(stack.gateway.ws, agent) as ws:
            acked: list[str] = []
            for _ in range(5):  # 20 commands, as many at once as the queue allows
                batch = [await submit_ok(nc, agent) for _ in range(MAX_QUEUED_PER_AGENT - 1)]
                while not set(batch) <= {
                    f["data"]["command_id"] for f in ws.frames if f["type"] == "command"
                }:
                    await ack(ws, (await ws.expect("command"))["command_id"], "completed")
                for cid in batch:
                    await wait_state(nc, cid, "completed")
                acked += batch
            undelivered = await submit_ok(nc, agent)
            expiring = await submit_ok(nc, agent + "-off", ttl_s=1)
            await lifecycle.next(UNDELIVERED_WITHIN_S, command_id=undelivered, state="failed")
            await ws.quiet(0.3)  # frames read after the failure were queued before it
        commands = [f["data"]["command_id"] for f in ws.frames if f["type"] == "command"]
        assert set(commands) == {*acked, undelivered} and commands.count(undelivered) <= MAX_ATTEMPTS
        for cid in acked:  # a slow ack may be overtaken by a redelivery, never by a double send
            sent = [e["attempt"] for e in lifecycle.seen if e["command_id"] == cid and e["state"] == "sent"]
            assert commands.count(cid) == (await get_command(nc, cid))["attempts"] == len(sent), (cid, sent)
        await wait_state(nc, expiring, "expired", timeout=6)
        events = [e for e in lifecycle.seen if e["command_id"] == undelivered]
        assert [e["state"] for e in events] == ["queued"] + ["sent"] * MAX_ATTEMPTS + ["failed"], events
        assert [e["attempt"] for e in events if e["state"] == "sent"] == list(range(1, MAX_ATTEMPTS + 1))
        record = await get_command(nc, undelivered)
        assert record["attempts"] == MAX_ATTEMPTS
        assert [h["state"] for h in record["history"]].count("failed") == 1
        assert [h["state"] for h in (await get_command(nc, expiring))["history"]] == ["queued", "expired"]
    finally:
        second.stop()


async def _undelivered(stack: EdgeStack, nc: NATS, misses: list[str]) -> None:
    agent = f"ct-rd-{uuid.uuid4().hex[:10]}"
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    within = ACK_TIMEOUT_S * 2 ** (MAX_ATTEMPTS - 1) + 2.5  # sends at 0, A, 3A, failed at 7A
    async with edge_socket(stack.gateway.ws, agent) as ws:
        cid = await submit_ok(nc, agent)
        started = time.monotonic()
        try:
            for _ in range(MAX_ATTEMPTS):
                await ws.expect("command", within)
            await lifecycle.next(within, command_id=cid, state="failed")
        except TimeoutError:
            record = await get_command(nc, cid)
            misses.append(
                f"{cid}: {record['state']} x{record['attempts']} after {time.monotonic() - started:.1f}s"
            )


# Was a deviation: timers fired an ack wait late (nats-server's nak delay) or slept through a pull.
async def test_redelivery_timers_fire_under_light_concurrency(stack: EdgeStack, nc: NATS) -> None:
    """The redelivery rule holds for every command, not just one at a time (up to 3 rounds of 20)."""
    misses: list[str] = []
    for _ in range(3):
        await asyncio.gather(*[_undelivered(stack, nc, misses) for _ in range(20)])
        if misses:
            break
    assert misses == []
