"""Replicas die, drain and restart: presence heals, state survives, sockets are told to reconnect."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.protocol import subjects
from tests.miniapp.support import FAST, SECRET, Gateway, join, new_session
from tests.support import ROOT, ServiceProcess, free_port

Factory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def replica(nats_url: str) -> AsyncIterator[ServiceProcess]:
    """A gateway as a real process (so it can be SIGKILLed), with test-sized heartbeats."""
    env = {
        "NATS_URL": nats_url,
        "SUPABASE_JWT_SECRET": SECRET,
        "HEARTBEAT_INTERVAL_S": str(FAST["heartbeat_interval_s"]),
        "PRESENCE_TTL_S": str(FAST["presence_ttl_s"]),
        "SHUTDOWN_GRACE_S": "10",
    }
    process = ServiceProcess("services.miniapp_gateway", free_port(), env)
    await process.start()
    yield process
    process.kill()


def as_gateway(process: ServiceProcess, like: Gateway) -> Gateway:
    """Address a process replica with the same helpers as an in-process one."""
    settings = like.settings.model_copy(update={"port": process.port})
    return Gateway(settings, like.app, like.runner, like.nc)


async def test_sigkilled_replica_is_reported_left_within_10_s(
    pair: tuple[Gateway, Gateway], replica: ServiceProcess, nc: NATS
) -> None:
    a, _ = pair
    session = new_session()
    published: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_presence(msg: Msg) -> None:
        await published.put(orjson.loads(msg.data))

    sub = await nc.subscribe(subjects.miniapp_presence(session), cb=on_presence)
    survivor, _ = await join(a, session, "survivor")
    victim, victim_connected = await join(as_gateway(replica, a), session, "victim")
    await survivor.expect("presence", event="joined")
    assert victim_connected["connection_count"] == 2

    replica.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    left = await survivor.expect("presence", timeout=10, event="left")
    assert time.monotonic() - killed_at < 10
    assert left["connection_id"] == victim_connected["connection_id"] and left["connection_count"] == 1

    async with asyncio.timeout(10):
        while (event := await published.get())["event"] != "left":
            pass
    assert event["connection_id"] == victim_connected["connection_id"] and event["user_id"] == "victim"
    late, snapshot = await join(a, session, "late")
    assert {p["user_id"] for p in snapshot["peers"]} == {"survivor", "late"}
    await sub.unsubscribe()
    for client in (survivor, late, victim):
        await client.close()


async def test_sigterm_closes_sockets_with_1012_and_leaves_cleanly(
    pair: tuple[Gateway, Gateway], replica: ServiceProcess
) -> None:
    a, _ = pair
    session = new_session()
    stayer, _ = await join(a, session)
    goer, _ = await join(as_gateway(replica, a), session)
    await stayer.expect("presence", event="joined")
    replica.signal(signal.SIGTERM)
    assert await goer.expect_close() == 1012
    assert (await stayer.expect("presence", event="left"))["connection_count"] == 1
    assert await asyncio.to_thread(replica.wait, 20) == 0
    await stayer.close()
    await goer.close()


async def test_state_survives_a_restart_of_every_gateway(gateway_factory: Factory) -> None:
    a = await gateway_factory()
    b = await gateway_factory()
    session = new_session()
    c1, _ = await join(a, session)
    c2, _ = await join(b, session)
    await c1.send("state_update", {"patch": {"score": {"red": 3}}})
    await c2.send("state_update", {"patch": {"score": {"blue": 1}}})
    await c1.expect("state_update", version=2)
    await c2.expect("state_update", version=2)
    for gateway in (a, b):
        await gateway.stop()
    assert await c1.expect_close() == 1012
    assert await c2.expect_close() == 1012
    fresh = await gateway_factory()
    back, snapshot = await join(fresh, session)
    assert snapshot["version"] == 2 and snapshot["state"] == {"score": {"red": 3, "blue": 1}}
    assert snapshot["connection_count"] == 1
    for client in (c1, c2, back):
        await client.close()


async def test_health_readiness_and_metrics(pair: tuple[Gateway, Gateway]) -> None:
    a, _ = pair
    session = new_session()
    client, _ = await join(a, session, "metrics-user")
    await client.send("ping")
    await client.expect("pong")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{a.base_url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{a.base_url}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{a.base_url}/metrics") as r:
            text = await r.text()
    for name in (
        "ikiro_miniapp_sockets_open",
        "ikiro_miniapp_sessions_active",
        'ikiro_miniapp_handshakes_total{outcome="accepted"}',
        'ikiro_miniapp_frames_received_total{type="ping"}',
        'ikiro_miniapp_frames_sent_total{type="pong"}',
        "ikiro_miniapp_fanout_seconds_bucket",
        "ikiro_miniapp_slow_consumer_closes_total",
        "ikiro_miniapp_disconnects_total",
    ):
        assert name in text, name
    assert session not in text and "metrics-user" not in text
    await client.close()


def test_start_without_a_verification_key_exits_with_one_line(nats_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "JWT_"))}
    env["NATS_URL"] = nats_url
    done = subprocess.run(
        [sys.executable, "-m", "services.miniapp_gateway"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "SUPABASE_JWT_SECRET" in lines[0], lines
