"""Replica failure and shutdown (DESIGN sections 2 and 5): a SIGKILLed replica's connections are
reported `left` within 10 s; SIGTERM closes sockets with 1012 and the process exits."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
from nats.aio.client import Client as NATS

from tests.contract_miniapp.conftest import StartReplica
from tests.contract_miniapp.support import Replica, join, listen, new_session, sigkill

REPORT_WITHIN_S = 10.0


async def test_sigkilled_replica_connections_are_reported_left_within_10_s(
    replicas: tuple[Replica, Replica],
    start_replica: StartReplica,
    http: aiohttp.ClientSession,
    bus: NATS,
) -> None:
    a, b = replicas
    victim_replica = await start_replica()  # default heartbeat and lease settings
    session = new_session()
    published = await listen(bus, f"miniapp.presence.{session}")
    here, _ = await join(http, a, session)
    there, _ = await join(http, b, session)
    victim, doomed = await join(http, victim_replica, session)
    assert doomed["connection_count"] == 3
    for browser in (here, there):
        await browser.expect("presence", event="joined", connection_id=doomed["connection_id"])

    sigkill(victim_replica)
    killed_at = time.monotonic()
    expected = {
        "event": "left",
        "user_id": doomed["user_id"],
        "connection_id": doomed["connection_id"],
        "connection_count": 2,
    }
    for browser in (here, there):
        left_in = REPORT_WITHIN_S - (time.monotonic() - killed_at)
        assert await browser.expect("presence", timeout=max(left_in, 0.1), event="left") == expected
    notice = await published.next(timeout=REPORT_WITHIN_S, event="left")
    assert notice["connection_id"] == doomed["connection_id"] and notice["connection_count"] == 2
    assert time.monotonic() - killed_at < REPORT_WITHIN_S
    late, snapshot = await join(http, b, session)
    assert snapshot["connection_count"] == 3
    assert doomed["connection_id"] not in {p["connection_id"] for p in snapshot["peers"]}
    await published.stop()
    for browser in (here, there, late, victim):
        await browser.close()


async def test_sigterm_turns_readyz_503_at_once_then_closes_sockets_with_1012(
    replicas: tuple[Replica, Replica], start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    stopping = await start_replica(SHUTDOWN_DELAY_S="1")
    session = new_session()
    survivor, _ = await join(http, replicas[0], session)
    first, one = await join(http, stopping, session)
    second, two = await join(http, stopping, session)
    stopping.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    async with asyncio.timeout(0.8):  # "at once", well inside the 1 s delay
        while True:
            async with http.get(stopping.base_url + "/readyz") as response:
                if response.status == 503:
                    break
            await asyncio.sleep(0.02)
    async with http.get(stopping.base_url + "/healthz") as response:
        assert response.status == 200
    for browser in (first, second):
        code, _ = await browser.expect_close(timeout=10)
        assert code == 1012
    assert time.monotonic() - signalled_at >= 1.0  # sockets were kept through SHUTDOWN_DELAY_S
    gone = set()
    for _ in range(2):
        gone.add((await survivor.expect("presence", event="left"))["connection_id"])
    assert gone == {one["connection_id"], two["connection_id"]}
    assert await stopping.wait_exit(timeout=15) == 0
    await survivor.close()
