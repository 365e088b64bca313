"""`/edge/ws` (DESIGN sections 3 and 6): handshake statuses, frames, limits and close codes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.contract.helpers import (
    IDLE_TIMEOUT_S,
    OTHER_SECRET,
    PREVIOUS_SECRET,
    SECRET,
    TOKEN_MAX_AGE_S,
    Stack,
    assert_error_body,
    edge_socket,
    get_agent,
    make_token,
    raw_upgrade,
    subscribe,
    wait_for,
)

# --- handshake ----------------------------------------------------------------------------------


async def test_valid_hmac_token_connects(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        pong = await ws.ping_pong()
        assert pong["type"] == "pong"
        assert isinstance(pong.get("data"), dict), pong


@pytest.mark.parametrize("bad_id", ["a.b", "*", ">", "x" * 129, "a b", "a/b", "ä", "%2A"])
async def test_malformed_id_is_400(stack: Stack, http: aiohttp.ClientSession, bad_id: str) -> None:
    token = make_token(bad_id)
    headers = {"Authorization": f"Bearer {token}"}
    # Header values must be latin-1 for the client; the query parameter is what is checked here.
    if bad_id.isascii():
        headers["X-Edge-Agent-Id"] = bad_id
    status, body = await raw_upgrade(http, stack.gateway.http, bad_id, headers)
    assert status == 400, body
    assert_error_body(body)


async def test_empty_id_is_400(stack: Stack, http: aiohttp.ClientSession) -> None:
    token = make_token("")
    status, body = await raw_upgrade(
        http, stack.gateway.http, "", {"Authorization": f"Bearer {token}", "X-Edge-Agent-Id": ""}
    )
    assert status == 400, body
    assert_error_body(body)


async def test_id_of_128_chars_connects(stack: Stack) -> None:
    agent = "Zz_-" * 32
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.ping_pong()


def _unsigned(agent: str) -> str:
    return base64.b64encode(f"{agent}:+1555:{int(time.time())}".encode()).decode()


UNAUTHORIZED: dict[str, Any] = {
    "missing": None,
    "empty bearer": "Bearer ",
    "not bearer": lambda a: f"Basic {make_token(a)}",
    "garbage": "Bearer !!!not-base64!!!",
    "unsigned": lambda a: f"Bearer {_unsigned(a)}",
    "bad signature": lambda a: f"Bearer {make_token(a, secret=OTHER_SECRET)}",
    "truncated signature": lambda a: f"Bearer {make_token(a, signature='abcd')}",
    "expired": lambda a: f"Bearer {make_token(a, ts=int(time.time()) - TOKEN_MAX_AGE_S - 60)}",
    "future": lambda a: f"Bearer {make_token(a, ts=int(time.time()) + 400)}",
    "non-numeric ts": lambda a: (
        "Bearer " + base64.b64encode(f"{a}:+1555:yesterday:{'0' * 64}".encode()).decode()
    ),
    "wrong raw secret": f"Bearer {OTHER_SECRET}",
}


@pytest.mark.parametrize("case", sorted(UNAUTHORIZED))
async def test_unauthorized_is_401(stack: Stack, http: aiohttp.ClientSession, agent: str, case: str) -> None:
    spec = UNAUTHORIZED[case]
    headers = {"X-Edge-Agent-Id": agent}
    if spec is not None:
        headers["Authorization"] = spec(agent) if callable(spec) else spec
    status, body = await raw_upgrade(http, stack.gateway.http, agent, headers)
    assert status == 401, body
    assert_error_body(body)


async def test_token_within_age_and_skew_accepted(stack: Stack, agent: str) -> None:
    now = int(time.time())
    for ts in (now - TOKEN_MAX_AGE_S + 30, now + 240):
        async with edge_socket(stack.gateway.ws, agent, token=make_token(agent, ts=ts)) as ws:
            await ws.ping_pong()


async def test_future_skew_boundary(stack: Stack, http: aiohttp.ClientSession, agent: str) -> None:
    now = int(time.time())
    async with edge_socket(stack.gateway.ws, agent, token=make_token(agent, ts=now + 290)) as ws:
        await ws.ping_pong()
    headers = {"Authorization": f"Bearer {make_token(agent, ts=now + 320)}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.gateway.http, agent, headers)
    assert status == 401, body


async def test_default_token_max_age_is_90000_s(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    # The production gateway runs without EDGE_TOKEN_MAX_AGE_S.
    now = int(time.time())
    async with edge_socket(stack.prod_gateway.ws, agent, token=make_token(agent, ts=now - 89_900)) as ws:
        await ws.ping_pong()
    headers = {"Authorization": f"Bearer {make_token(agent, ts=now - 90_100)}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.prod_gateway.http, agent, headers)
    assert status == 401, body
    assert_error_body(body)


async def test_missing_agent_id_header_is_refused(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    headers = {"Authorization": f"Bearer {make_token(agent)}"}
    status, body = await raw_upgrade(http, stack.gateway.http, agent, headers)
    assert status in (400, 401, 403), (status, body)
    assert_error_body(body)


async def test_missing_agent_id_query_is_refused(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    headers = {"Authorization": f"Bearer {make_token(agent)}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.gateway.http, None, headers)
    assert status in (400, 401, 403), (status, body)
    assert_error_body(body)


# Was a deviation: the raw previous secret was taken as a legacy token.
async def test_raw_previous_secret_is_not_a_legacy_token(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    headers = {"Authorization": f"Bearer {PREVIOUS_SECRET}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.gateway.http, agent, headers)
    assert status == 401, (status, body)


async def test_token_for_another_agent_is_403(stack: Stack, http: aiohttp.ClientSession, agent: str) -> None:
    other = agent + "-other"
    headers = {"Authorization": f"Bearer {make_token(other)}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.gateway.http, agent, headers)
    assert status == 403, body
    assert_error_body(body)


async def test_query_and_header_disagree_is_403(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    other = agent + "-other"
    for query_id, header_id, token_id in ((agent, other, agent), (other, agent, agent)):
        headers = {"Authorization": f"Bearer {make_token(token_id)}", "X-Edge-Agent-Id": header_id}
        status, body = await raw_upgrade(http, stack.gateway.http, query_id, headers)
        assert status == 403, (query_id, header_id, body)
        assert_error_body(body)


async def test_previous_secret_accepted_during_rotation(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent, token=make_token(agent, secret=PREVIOUS_SECRET)) as ws:
        await ws.ping_pong()


async def test_legacy_raw_secret_accepted_in_development(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent, token=SECRET) as ws:
        await ws.ping_pong()


async def test_legacy_raw_secret_refused_in_production(
    stack: Stack, http: aiohttp.ClientSession, agent: str
) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "X-Edge-Agent-Id": agent}
    status, body = await raw_upgrade(http, stack.prod_gateway.http, agent, headers)
    assert status == 401, body
    assert_error_body(body)
    # The HMAC token still works there.
    async with edge_socket(stack.prod_gateway.ws, agent) as ws:
        await ws.ping_pong()


# --- frames -------------------------------------------------------------------------------------


UNUSABLE_FRAMES = [
    "this is not json",
    "[1, 2, 3]",
    '"just a string"',
    '{"data": {}}',
    '{"type": 5, "data": {}}',
    '{"type": "ping", "data": "not an object"}',
    '{"type": "teleport", "data": {}}',
    '{"type": "command_ack", "data": {"command_id": "not-a-uuid", "status": "received", "error": null}}',
    '{"type": "command_ack", "data": {"command_id": "6f1c1f9e-53a4-4f83-9d52-3c5d1f5b2a10",'
    ' "status": "done"}}',
    '{"type": "status", "data": "fine"}',
]


@pytest.mark.parametrize("frame", UNUSABLE_FRAMES)
async def test_unusable_frame_gets_error_and_socket_stays_open(stack: Stack, agent: str, frame: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send_raw(frame)
        reply = await ws.recv_type("error")
        assert isinstance(reply["data"], dict), reply
        assert isinstance(reply["data"].get("code"), str) and reply["data"]["code"], reply
        assert isinstance(reply["data"].get("message"), str), reply
        await ws.ping_pong()
        assert not ws.ws.closed


async def test_twenty_bad_frames_tolerated_twenty_first_closes_1008(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        for _ in range(20):
            await ws.send_raw("nope")
            await ws.recv_type("error")
        await ws.ping_pong()
        await ws.send_raw("nope")
        assert await ws.close_code() == 1008


def _frame_of_size(size: int) -> str:
    base = json.dumps({"type": "status", "data": {"f": ""}})
    text = json.dumps({"type": "status", "data": {"f": "x" * (size - len(base))}})
    assert len(text) == size
    return text


async def test_frame_just_under_256_kib_is_read(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send_raw(_frame_of_size(256 * 1024 - 1))
        # Read (and refused as a status over 16 KiB), not a reason to close.
        reply = await ws.recv_type("error")
        assert reply["data"]["code"] == "too_large"
        await ws.ping_pong()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "permessage-deflate"])
async def test_frame_of_exactly_256_kib_is_not_over_the_limit(
    stack: Stack, agent: str, compress: int
) -> None:
    # Found as an off-by-one (exactly 262144 bytes closed with 1009); fixed meanwhile in 9a99b84.
    async with edge_socket(stack.gateway.ws, agent, compress=compress) as ws:
        await ws.send_raw(_frame_of_size(256 * 1024))
        reply = await ws.recv_type("error")
        assert reply["data"]["code"] == "too_large"
        await ws.ping_pong()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "permessage-deflate"])
async def test_frame_over_256_kib_closes_1009_compressed_or_not(
    stack: Stack, agent: str, compress: int
) -> None:
    async with edge_socket(stack.gateway.ws, agent, compress=compress) as ws:
        await ws.send_raw(_frame_of_size(256 * 1024 + 1))
        assert await ws.close_code() == 1009


async def test_idle_socket_closed_1001(stack: Stack, agent: str) -> None:
    # The production gateway runs with IDLE_TIMEOUT_S=1 (the contract's 90 s, shortened).
    async with edge_socket(stack.prod_gateway.ws, agent) as ws:
        # Frames keep it alive past the idle timeout ...
        deadline = time.monotonic() + IDLE_TIMEOUT_S * 2
        while time.monotonic() < deadline:
            await ws.ping_pong()
            await asyncio.sleep(IDLE_TIMEOUT_S / 4)
        # ... silence closes it.
        await ws.ping_pong()
        started = time.monotonic()
        assert await ws.close_code(timeout=IDLE_TIMEOUT_S * 5) == 1001
        assert time.monotonic() - started >= IDLE_TIMEOUT_S * 0.8


async def test_new_connection_replaces_old_with_4000(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as old:
        await old.ping_pong()
        async with edge_socket(stack.gateway.ws, agent) as new:
            assert await old.close_code() == 4000
            await new.ping_pong()


async def test_replacement_across_replicas(stack: Stack, nc: NATS, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as old:
        await old.ping_pong()
        async with edge_socket(stack.prod_gateway.ws, agent) as new:
            assert await old.close_code() == 4000
            await new.ping_pong()
            info = await get_agent(nc, agent)
            assert info["online"] is True


# --- status -------------------------------------------------------------------------------------


async def test_status_kept_and_published(stack: Stack, nc: NATS, agent: str) -> None:
    statuses = await subscribe(nc, f"edge.status.{agent}")
    status = {"battery": 80, "imessage": "ok", "nested": {"a": [1, 2]}}
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send("status", status)
        subject, event = await statuses.next()
        assert subject == f"edge.status.{agent}"
        assert event["edge_agent_id"] == agent
        assert event["status"] == status
        assert isinstance(event["at"], str)
        info = await get_agent(nc, agent)
        assert info["last_status"] == status


async def test_status_over_16_kib_refused_not_kept(stack: Stack, nc: NATS, agent: str) -> None:
    statuses = await subscribe(nc, f"edge.status.{agent}")
    small = {"v": 1, "fill": "y" * (15 * 1024)}
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send("status", small)
        await statuses.next()
        await ws.send("status", {"v": 2, "fill": "z" * (17 * 1024)})
        reply = await ws.recv_type("error")
        assert reply["data"]["code"] == "too_large", reply
        await ws.ping_pong()
        assert await statuses.quiet(0.3) == []
        assert (await get_agent(nc, agent))["last_status"] == small


# --- presence -----------------------------------------------------------------------------------


async def test_presence_connected_and_disconnected(stack: Stack, nc: NATS, agent: str) -> None:
    presence = await subscribe(nc, f"edge.presence.{agent}")
    async with edge_socket(stack.gateway.ws, agent) as ws:
        subject, up = await presence.next()
        assert subject == f"edge.presence.{agent}"
        assert up["edge_agent_id"] == agent
        assert up["event"] == "connected"
        assert isinstance(up["connection_id"], str) and up["connection_id"]
        assert isinstance(up["at"], str)
        info = await get_agent(nc, agent)
        assert info["online"] is True
        assert info["connected_at"] is not None
        await ws.ping_pong()
    _, down = await presence.next()
    assert down["event"] == "disconnected"
    assert down["connection_id"] == up["connection_id"]

    async def offline() -> bool:
        return (await get_agent(nc, agent))["online"] is False

    await wait_for(offline, 5, what="agent offline after close")
    assert (await get_agent(nc, agent))["last_seen"] is not None


async def test_frames_are_json_objects_with_type_and_data(stack: Stack, agent: str) -> None:
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send_raw(json.dumps({"type": "ping", "data": {}}))
        frame = await ws.recv()
        assert set(frame) == {"type", "data"}, frame
        assert frame["type"] == "pong"
        assert frame["data"] == {} or isinstance(frame["data"], dict)


async def test_frames_are_sent_as_text(stack: Stack, agent: str) -> None:
    # Found failing by this suite; fixed in fabfbdd.
    async with edge_socket(stack.gateway.ws, agent) as ws:
        await ws.send_raw(json.dumps({"type": "ping", "data": {}}))
        msg = await ws.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
