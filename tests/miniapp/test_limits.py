"""The contract's limits: frame size, state size, session cap across replicas, rate, slow readers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from nats.aio.client import Client as NATS

from services.miniapp_gateway.gateway import GATEWAY
from services.miniapp_gateway.metrics import MiniAppGatewayMetrics
from shared.protocol import subjects
from shared.runtime.service import METRICS
from tests.miniapp.support import Client, Gateway, connect, join, new_session, token

Factory = Callable[..., Awaitable[Gateway]]


async def test_frame_over_64_kib_closes_with_1009(pair: tuple[Gateway, Gateway]) -> None:
    client, _ = await join(pair[0], new_session())
    await client.send("action", {"action": "big", "payload": "x" * (64 * 1024)})
    assert await client.expect_close() == 1009
    await client.close()


async def test_state_over_256_kib_is_refused_and_unchanged(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    client, _ = await join(a, session)
    chunk = "y" * (60 * 1024)
    for i in range(4):
        await client.send("state_update", {"patch": {f"part{i}": chunk}})
        await client.expect("state_update", version=i + 1)
    await client.send("state_update", {"patch": {"part4": chunk}, "client_msg_id": "too-much"})
    error = await client.expect("error")
    assert error["code"] == "state_too_large" and error["client_msg_id"] == "too-much"
    late, snapshot = await join(b, session)
    assert snapshot["version"] == 4 and sorted(snapshot["state"]) == ["part0", "part1", "part2", "part3"]
    await client.close()
    await late.close()


async def test_session_cap_counts_connections_on_every_replica(gateway_factory: Factory) -> None:
    a = await gateway_factory(max_connections_per_session=3)
    b = await gateway_factory(max_connections_per_session=3)
    session = new_session()
    c1, _ = await join(a, session)
    c2, _ = await join(b, session)
    c3, _ = await join(a, session)
    refused = await connect(b, session)
    assert await refused.expect_close() == 4029
    assert refused.close_reason == "session full"
    await c2.close()
    await c1.expect("presence", event="left")
    c4, connected = await join(b, session)
    assert connected["connection_count"] == 3
    for client in (c1, c3, c4, refused):
        await client.close()


async def test_session_cap_holds_when_many_join_at_once(gateway_factory: Factory) -> None:
    a = await gateway_factory(max_connections_per_session=3)
    b = await gateway_factory(max_connections_per_session=3)
    session = new_session()
    clients = await asyncio.gather(*(connect(gw, session) for gw in (a, b) * 4))

    async def outcome(client: Client) -> str:
        frame = await client.next(timeout=10)
        return (
            "admitted"
            if frame is not None and frame["type"] == "connected"
            else f"closed {client.close_code}"
        )

    outcomes = await asyncio.gather(*(outcome(c) for c in clients))
    assert outcomes.count("admitted") <= 3
    assert all(o == "admitted" or o == "closed 4029" for o in outcomes)
    assert outcomes.count("admitted") >= 1
    for client in clients:
        await client.close()


async def test_rate_limit_refuses_frames_past_the_burst(pair: tuple[Gateway, Gateway]) -> None:
    client, _ = await join(pair[0], new_session())
    for _ in range(80):
        await client.send("ping")
    kinds: list[str] = []
    for _ in range(80):
        frame = await client.next()
        assert frame is not None
        kinds.append(frame["type"] if frame["type"] != "error" else frame["data"]["code"])
    assert kinds.count("pong") >= 60 and kinds.count("rate_limited") >= 1
    assert set(kinds) == {"pong", "rate_limited"}
    await client.close()


async def test_sustained_rate_abuse_closes_with_1008(pair: tuple[Gateway, Gateway]) -> None:
    client, _ = await join(pair[1], new_session())
    for _ in range(200):
        if client.ws.closed:
            break
        await client.send("ping")
    assert await client.expect_close() == 1008
    await client.close()


def tiny_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_client_that_stops_reading_is_closed_with_1013(gateway_factory: Factory, nc: NATS) -> None:
    gateway = await gateway_factory(outbox_max_frames=20, outbox_max_bytes=256 * 1024)
    session = new_session()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=tiny_receive_buffer))
    ws = await http.ws_connect(gateway.ws_url(session, token("sloth")))
    sloth = Client(ws, http)
    await sloth.expect("connected")
    reader, _ = await join(gateway, session)  # a healthy peer on the same replica
    (conn,) = [c for c in gateway.app[GATEWAY].hub.connections if c.user_id == "sloth"]
    blob = "z" * (16 * 1024)
    for i in range(1000):
        if conn.close_request is not None:
            break
        await nc.request(
            subjects.MINIAPP_STATE_UPDATE,
            orjson.dumps({"session_id": session, "patch": {"blob": f"{i}{blob}"}}),
        )
        await reader.expect("state_update")  # the healthy peer keeps up the whole time
    assert conn.close_request is not None and conn.close_request.code == 1013
    assert await sloth.expect_close(timeout=20) == 1013
    metrics = gateway.app[METRICS]
    assert isinstance(metrics, MiniAppGatewayMetrics)
    assert metrics.slow_consumer_closes._value.get() == 1
    await reader.send("ping")
    await reader.expect("pong")
    await reader.close()
    await sloth.close()
