"""Generated input on every edge surface (the socket, the upgrade, `/edge/sync`, the dispatcher's
NATS API): each gets an `error` frame, a contract close code, an exact status or an `{"ok": false}`
reply in time; the gateway never dies, never logs a traceback for it, and a well-behaved agent on
the same gateway keeps its latency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from tests.harness import fuzz
from tests.harness.bus import assert_answered, every_subject, request
from tests.harness.edge import EdgeStack, body_for, edge_headers, edge_socket, make_token, raw_upgrade, sync
from tests.harness.fuzz import Calm
from tests.harness.ws import Socket

MAX_FRAME = 256 * 1024
FRAMES = fuzz.frames(
    ["ping", "command_ack", "status"],
    {"command_ack": ["command_id", "status", "error", "completed_at"], "status": ["battery", "mode"]},
    MAX_FRAME,
)
API = [
    "edge.commands.submit",
    "edge.commands.get",
    "edge.commands.cancel",
    "edge.agents.get",
    "edge.agents.commands",
    "edge.agents.purge",
    "edge.agents.pull",
    "edge.acks.submit",
]


@pytest.fixture(scope="module")
async def calm(stack: EdgeStack) -> AsyncIterator[Calm]:
    async with edge_socket(stack.gateway.ws, f"calm-{uuid.uuid4().hex[:8]}") as socket:
        yield await Calm.measured(socket)


@pytest.fixture(scope="module")
def log_start(stack: EdgeStack) -> int:
    return len(stack.gateway.output())


def no_traceback(stack: EdgeStack, since: int) -> None:
    assert "Traceback" not in stack.gateway.output()[since:], stack.gateway.output()[since:][-3000:]
    assert stack.gateway.alive() and stack.dispatcher.alive()


async def send(socket: Socket, frame: fuzz.Frame) -> None:
    if isinstance(frame.payload, bytes):
        await socket.ws.send_bytes(frame.payload)
    else:
        await socket.ws.send_str(frame.payload)


async def replies_until_pong(socket: Socket) -> list[dict[str, Any]]:
    """Everything the gateway sent until it answered a ping (or closed the socket)."""
    if socket.close_code is None:
        with contextlib.suppress(aiohttp.ClientError):  # the gateway may be closing it
            await socket.send("ping")
    seen = []
    while (frame := await socket.next(timeout=5)) is not None:
        seen.append(frame)
        if frame["type"] == "pong":
            break
    return seen


@given(sent=st.lists(FRAMES, min_size=1, max_size=6))
async def test_any_frame_gets_an_error_or_a_contract_close_and_never_hurts_the_gateway(
    stack: EdgeStack, calm: Calm, log_start: int, sent: list[fuzz.Frame]
) -> None:
    async with edge_socket(stack.gateway.ws, f"fz-{uuid.uuid4().hex[:10]}") as socket:
        for frame in sent:
            if socket.close_code is not None:
                break
            try:
                await send(socket, frame)
            except aiohttp.ClientError:
                break
        replies = await replies_until_pong(socket)
        for reply in replies:
            assert reply["type"] in ("error", "pong"), reply
            if reply["type"] == "error":
                assert isinstance(reply["data"]["code"], str) and reply["data"]["code"]
                assert isinstance(reply["data"]["message"], str) and reply["data"]["message"]
        if socket.close_code is not None:
            # 1009; or, when the client went on sending after that close, the reset of a connection
            # closed with its data unread (the close frame lost with it).
            assert socket.close_code in (1009, 1006), socket.close_code
            assert any(f.size > MAX_FRAME for f in sent)
        else:
            assert replies and replies[-1]["type"] == "pong"
    await calm.check()
    no_traceback(stack, log_start)


@given(
    query=st.none() | st.text(max_size=140) | st.sampled_from(fuzz.EVIL_IDS),
    header=st.none() | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140),
    token=st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=300),
)
async def test_any_upgrade_is_answered_with_an_exact_refusal(
    stack: EdgeStack, log_start: int, query: str | None, header: str | None, token: str | None
) -> None:
    headers = {
        k: v
        for k, v in {"X-Edge-Agent-Id": header, "Authorization": token and f"Bearer {token}"}.items()
        if v is not None
    }
    async with aiohttp.ClientSession() as http:
        status, body = await raw_upgrade(http, stack.gateway.http, query, headers)
    assert status in (400, 401, 403), (status, body)
    assert isinstance(body, dict) and body["error"]["code"] and body["error"]["message"]
    no_traceback(stack, log_start)


@given(body=fuzz.bodies())
async def test_any_sync_body_is_answered_with_an_exact_status(
    stack: EdgeStack, log_start: int, body: bytes
) -> None:
    agent = f"fz-{uuid.uuid4().hex[:10]}"
    async with aiohttp.ClientSession() as http:
        status, reply, _ = await sync(http, stack.gateway.http, agent, raw=body)
    assert status in (200, 403, 413, 422), (status, reply, body)
    if status == 200:
        assert set(reply) == {"commands", "ack_events", "config_updates"}
    else:
        assert reply["error"]["code"] and reply["error"]["message"]
    no_traceback(stack, log_start)


MAX_SYNC_BODY = 1024 * 1024
KIB_64 = 64 * 1024


@settings(max_examples=12)
@given(
    off_the_limit=st.integers(-4, 4) | st.integers(-KIB_64, KIB_64),
    chunk=st.integers(4 * 1024, 256 * 1024) | st.sampled_from([1000, 65535, 65536, 65537]),
)
async def test_a_chunked_sync_body_near_the_limit_is_taken_up_to_1_mib_and_413_past_it(
    stack: EdgeStack, log_start: int, off_the_limit: int, chunk: int
) -> None:
    """A valid body padded with whitespace to the limit + `off_the_limit`, sent chunked (no
    Content-Length to check first) in chunks of `chunk` bytes."""
    size = MAX_SYNC_BODY + off_the_limit
    agent = f"fz-{uuid.uuid4().hex[:10]}"
    core = json.dumps(body_for(agent)).encode()
    body = core + b" " * (size - len(core))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    headers = {**edge_headers(agent), "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.gateway.http}/edge/sync", data=chunks(), headers=headers, chunked=True) as r,
    ):
        assert r.status == (200 if size <= MAX_SYNC_BODY else 413), (size, await r.text())
    no_traceback(stack, log_start)


@settings(max_examples=8)
@given(cuts=st.lists(st.floats(0, 1), max_size=12), pause_s=st.floats(0, 0.25))
async def test_a_request_whose_headers_drip_in_within_10_s_is_served(
    stack: EdgeStack, log_start: int, cuts: list[float], pause_s: float
) -> None:
    """The header deadline cuts only the incomplete: a whole /edge/sync request sent in pieces,
    with pauses (at most 3 s in all), is answered as if sent at once."""
    agent = f"fz-{uuid.uuid4().hex[:10]}"
    body = json.dumps(body_for(agent)).encode()
    headers = {**edge_headers(agent), "Host": "x", "Content-Length": len(body)}
    head = "POST /edge/sync HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    request_bytes = head.encode() + body
    points = sorted({int(c * len(request_bytes)) for c in cuts} | {0, len(request_bytes)})
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
    try:
        for start, end in itertools.pairwise(points):
            writer.write(request_bytes[start:end])
            await writer.drain()
            await asyncio.sleep(pause_s)
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.split()[1] == b"200", status_line
    no_traceback(stack, log_start)


@given(subject=st.sampled_from(API), body=fuzz.bodies())
async def test_any_request_on_the_internal_api_is_answered_in_time(
    stack: EdgeStack, nc: NATS, subject: str, body: bytes
) -> None:
    assert_answered(await request(nc, subject, body))
    assert stack.dispatcher.alive()


async def test_ids_that_would_change_a_subject_are_refused_at_every_entry_point(
    stack: EdgeStack, nc: NATS
) -> None:
    async with every_subject(nc) as subjects, aiohttp.ClientSession() as http:
        for evil in fuzz.EVIL_IDS:
            status, _ = await raw_upgrade(http, stack.gateway.http, evil, edge_headers("good"))
            assert status in (400, 403), evil
            if evil.isprintable():  # an HTTP client cannot even send the others in a header
                status, _ = await raw_upgrade(
                    http, stack.gateway.http, "good", edge_headers("good", header_id=evil)
                )
                assert status in (400, 403), evil
                token = make_token(evil)  # a validly signed token naming the bad id
                status, _ = await raw_upgrade(
                    http, stack.gateway.http, "good", edge_headers("good", token=token)
                )
                assert status in (401, 403), evil
            caller = f"good-{uuid.uuid4().hex[:8]}"  # its own rate window
            status, _, _ = await sync(http, stack.gateway.http, caller, body={"edge_agent_id": evil})
            assert status in (400, 403, 422), evil
            for subject, body in (
                (
                    "edge.commands.submit",
                    {"edge_agent_id": evil, "command_type": "emit_event", "payload": {"event_type": "e"}},
                ),
                ("edge.agents.get", {"edge_agent_id": evil}),
                ("edge.agents.commands", {"edge_agent_id": evil}),
                ("edge.agents.purge", {"edge_agent_id": evil}),
                ("edge.agents.pull", {"edge_agent_id": evil, "connection_id": "c"}),
                (
                    "edge.acks.submit",
                    {
                        "acks": [
                            {
                                "edge_agent_id": evil,
                                "connection_id": "c",
                                "ack": {"command_id": str(uuid.uuid4()), "status": "received"},
                            }
                        ]
                    },
                ),
            ):
                reply = await request(nc, subject, body)
                assert reply["ok"] is False and reply["error"]["code"] == "invalid_request", (
                    subject,
                    evil,
                    reply,
                )
    assert subjects and fuzz.leaked(subjects) == [], fuzz.leaked(subjects)
