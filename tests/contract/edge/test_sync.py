"""`POST /edge/sync`, the HTTP fallback (DESIGN section 3): every status code and the ack rules."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.harness.bus import subscribe
from tests.harness.edge import (
    ACK_TIMEOUT_S,
    OTHER_SECRET,
    PREVIOUS_SECRET,
    SECRET,
    SYNC_RATE_PER_MIN,
    TOKEN_MAX_AGE_S,
    EdgeStack,
    assert_error_body,
    body_for,
    edge_headers,
    gateway_env,
    get_agent,
    make_token,
    submit_ok,
    sync,
    wait_state,
)
from tests.harness.proc import NatsServer, Service, wait_until


async def test_sync_returns_queued_commands_and_accepts_events(
    stack: EdgeStack, http: aiohttp.ClientSession, nc: NATS, agent: str
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
    await lifecycle.next(command_id=urgent, state="sent")
    await lifecycle.next(command_id=normal, state="sent")
    for sent in pending:
        event = await events.next()
        assert events.last_subject == f"edge.events.{agent}"
        assert event["edge_agent_id"] == agent and isinstance(event["at"], str)
        assert (event["event"]["event_id"], event["event"]["event_type"]) == (
            sent["event_id"],
            sent["event_type"],
        )


async def test_sync_acks_move_commands_on(
    stack: EdgeStack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    cid = await submit_ok(nc, agent)
    status, reply, _ = await sync(http, stack.gateway.http, agent)
    assert status == 200 and [c["command_id"] for c in reply["commands"]] == [cid], reply
    acks = [
        {"command_id": cid, "status": "received", "error": None},
        {"command_id": cid, "status": "executing", "error": None},
        {"command_id": cid, "status": "completed", "error": None, "completed_at": "2030-01-01T00:00:00Z"},
    ]
    status, reply, _ = await sync(
        http, stack.gateway.http, agent, body_for(agent, acks=acks, last_command_id=cid)
    )
    assert status == 200 and reply["commands"] == [], reply
    record = await wait_state(nc, cid, "completed")
    assert [h["state"] for h in record["history"]] == ["queued", "sent", "received", "executing", "completed"]


async def test_sync_commands_follow_redelivery_rules(
    stack: EdgeStack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    # The production gateway runs the default SYNC_RATE_PER_MIN (60): room to ask every 0.1 s.
    lifecycle = await subscribe(nc, f"edge.lifecycle.{agent}.>")
    cid = await submit_ok(nc, agent)
    replies: list[list[str]] = []

    async def handed_out_twice() -> bool:
        status, reply, _ = await sync(http, stack.prod_gateway.http, agent)
        assert status == 200, reply
        replies.append([c["command_id"] for c in reply["commands"]])
        return sum(1 for r in replies if r) == 2

    await wait_until(handed_out_twice, ACK_TIMEOUT_S * 4 + 3, interval=0.1)
    # Handed out, then nothing while it waits for its ack, then again once the ack timeout passed.
    assert len(replies) > 2 and replies[0] == replies[-1] == [cid] and not any(replies[1:-1]), replies

    def sent() -> list[dict[str, Any]]:
        return [e for e in lifecycle.seen if e["state"] == "sent"]

    # The events travel on NATS, the reply over HTTP: the second `sent` may land a moment after it.
    await wait_until(lambda: len(sent()) >= 2, 5, what="two sent events")
    assert [e["attempt"] for e in sent()] == [1, 2]
    first, second = (datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in sent())
    assert (second - first).total_seconds() >= ACK_TIMEOUT_S * 0.9


async def test_sync_status_and_last_command_id_kept_and_status_published(
    stack: EdgeStack, http: aiohttp.ClientSession, nc: NATS, agent: str
) -> None:
    statuses = await subscribe(nc, f"edge.status.{agent}")
    last = str(uuid.uuid4())
    status, reply, _ = await sync(
        http, stack.gateway.http, agent, body_for(agent, status={"battery": 42}, last_command_id=last)
    )
    assert status == 200, reply
    event = await statuses.next()
    assert (event["edge_agent_id"], event["status"]) == (agent, {"battery": 42})
    info = await get_agent(nc, agent)
    assert (info["last_status"], info.get("last_command_id")) == ({"battery": 42}, last)


async def test_sync_accepts_the_same_tokens_as_the_socket(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str
) -> None:
    for gateway, token in [
        (stack.gateway, make_token(agent, secret=PREVIOUS_SECRET)),
        (stack.gateway, SECRET),  # legacy, outside production
        (stack.prod_gateway, make_token(agent)),
    ]:
        status, reply, _ = await sync(http, gateway.http, agent, token=token)
        assert status == 200, reply


SYNC_REFUSED: dict[str, tuple[int, str, Callable[[str], dict[str, Any]]]] = {
    "no Authorization": (401, "gateway", lambda a: {"auth": False}),
    "empty token": (401, "gateway", lambda a: {"token": ""}),
    "garbage": (401, "gateway", lambda a: {"token": "garbage"}),
    "bad signature": (401, "gateway", lambda a: {"token": make_token(a, secret=OTHER_SECRET)}),
    "expired": (
        401,
        "gateway",
        lambda a: {"token": make_token(a, ts=int(time.time()) - TOKEN_MAX_AGE_S - 60)},
    ),
    "305 s ahead": (401, "gateway", lambda a: {"token": make_token(a, ts=int(time.time()) + 305)}),
    "legacy in production": (401, "prod_gateway", lambda a: {"token": SECRET}),
    "token for another agent": (403, "gateway", lambda a: {"token": make_token(a + "-x")}),
    "header names another agent": (403, "gateway", lambda a: {"header_id": a + "-x"}),
    "body names another agent": (403, "gateway", lambda a: {"body": body_for(a + "-x")}),
}


@pytest.mark.parametrize("case", sorted(SYNC_REFUSED))
async def test_sync_refused(stack: EdgeStack, http: aiohttp.ClientSession, agent: str, case: str) -> None:
    status, gateway, kwargs = SYNC_REFUSED[case]
    got, reply, _ = await sync(http, getattr(stack, gateway).http, agent, **kwargs(agent))
    assert got == status, reply
    assert_error_body(reply)


UUID = "6f1c1f9e-53a4-4f83-9d52-3c5d1f5b2a10"
INVALID_BODIES: dict[str, Any] = {
    "not-json": b"not json",
    "array": b"[]",
    "events-not-list": {"pending_events": "nope"},
    "event-without-id": {"pending_events": [{"event_type": "x", "details": {}}]},
    # Found failing by this suite; fixed in fabfbdd.
    "event-without-details": {"pending_events": [{"event_id": "e1", "event_type": "x"}]},
    "bad-last-command-id": {"last_command_id": "not-a-uuid"},
    "status-not-object": {"status": "ok"},
    "bad-ack-status": {"acks": [{"command_id": UUID, "status": "done", "error": None}]},
    "bad-ack-command-id": {"acks": [{"command_id": "x", "status": "received", "error": None}]},
}


@pytest.mark.parametrize("case", sorted(INVALID_BODIES))
async def test_sync_invalid_body_422(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str, case: str
) -> None:
    bad = INVALID_BODIES[case]
    raw = bad if isinstance(bad, bytes) else json.dumps(body_for(agent, **bad)).encode()
    status, reply, _ = await sync(http, stack.gateway.http, agent, raw=raw)
    assert status == 422, reply
    assert_error_body(reply)


async def test_sync_body_over_1_mib_413_and_of_exactly_1_mib_read(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str
) -> None:
    def body(fill: int) -> bytes:
        event = {"event_id": "big", "event_type": "log", "details": {"blob": "x" * fill}}
        return json.dumps(body_for(agent, pending_events=[event])).encode()

    exactly = body(1024 * 1024 - len(body(0)))
    assert len(exactly) == 1024 * 1024
    status, reply, _ = await sync(http, stack.gateway.http, agent, raw=exactly)
    assert status == 200, reply
    status, reply, _ = await sync(http, stack.gateway.http, agent, raw=body(1024 * 1024 + 100))
    assert status == 413, reply
    assert_error_body(reply)


async def chunked(fill: bytes, total: int) -> AsyncIterator[bytes]:
    """`total` bytes in 64 KiB chunks, sent with Transfer-Encoding: chunked (no Content-Length)."""
    for start in range(0, total, 64 * 1024):
        yield fill * min(64 * 1024, total - start)


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 1024 * 1024 + 64 * 1024])
async def test_sync_chunked_body_over_1_mib_413(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str, size: int
) -> None:
    # Was: a chunked body of exactly 1,048,577 bytes was read and parsed (413 only with Content-Length).
    headers = {**edge_headers(agent), "Content-Type": "application/json"}
    async with http.post(
        f"{stack.gateway.http}/edge/sync", data=chunked(b" ", size), headers=headers, chunked=True
    ) as r:
        assert r.status == 413, await r.text()
        assert_error_body(await r.json())


@pytest.mark.parametrize("case", ["no token", "forged token", "over the rate"])
async def test_sync_refuses_from_the_headers_before_the_body_arrives(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str, case: str
) -> None:
    """A caller the headers already refuse is answered at once, its 1 MiB body never read: the
    request below announces it and sends none, and still gets its answer."""
    headers = edge_headers(agent, token=make_token(agent, secret=OTHER_SECRET))
    if case == "no token":
        del headers["Authorization"]
    if case == "over the rate":
        headers = edge_headers(agent)
        for _ in range(SYNC_RATE_PER_MIN):
            assert (await sync(http, stack.gateway.http, agent))[0] == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
    lines = [f"{k}: {v}" for k, v in {**headers, "Host": "x", "Content-Length": str(1024 * 1024)}.items()]
    writer.write(("POST /edge/sync HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.split()[1] == (b"429" if case == "over the rate" else b"401"), status_line


async def test_sync_rate_limit_429_with_retry_after(
    stack: EdgeStack, http: aiohttp.ClientSession, agent: str
) -> None:
    for _ in range(SYNC_RATE_PER_MIN):
        status, reply, _ = await sync(http, stack.gateway.http, agent)
        assert status == 200, reply
    status, reply, headers = await sync(http, stack.gateway.http, agent)
    assert status == 429, reply
    assert_error_body(reply)
    retry_after = headers.get("Retry-After", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, headers
    status, reply, _ = await sync(http, stack.gateway.http, agent + "-2")  # per agent
    assert status == 200, reply


@pytest.fixture(scope="module")
async def lonely_gateway(
    stack: EdgeStack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """A gateway on a broker of its own, with no dispatcher anywhere."""
    broker = NatsServer(Path(tmp_path_factory.mktemp("lonely")))
    broker.start()
    svc = Service("services.edge_gateway", gateway_env(broker.url, UPSTREAM_TIMEOUT_S="1"), stack.log_dir)
    try:
        svc.start()
        yield await svc.ready()
    finally:
        svc.stop()
        broker.stop()


async def test_sync_503_without_dispatcher(
    lonely_gateway: Service, http: aiohttp.ClientSession, agent: str
) -> None:
    status, reply, _ = await sync(http, lonely_gateway.http, agent)
    assert status == 503, reply
    assert_error_body(reply)
