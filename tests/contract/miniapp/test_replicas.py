"""Replica failure and shutdown (DESIGN sections 2 and 5): a SIGKILLed replica's connections are
reported `left` within 10 s; SIGTERM turns /readyz 503 at once, closes sockets with 1012 and the
process exits; the session's state outlives every gateway."""

from __future__ import annotations

import signal
import time

import aiohttp
from nats.aio.client import Client as NATS

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.bus import subscribe
from tests.harness.miniapp import join, new_session
from tests.harness.proc import Service, http_status, wait_until

REPORT_WITHIN_S = 10.0


async def test_sigkilled_replica_connections_are_reported_left_within_10_s(
    replicas: tuple[Service, Service], start_replica: StartReplica, http: aiohttp.ClientSession, nc: NATS
) -> None:
    a, b = replicas
    victim_replica = await start_replica()  # default heartbeat and lease settings
    session = new_session()
    published = await subscribe(nc, f"miniapp.presence.{session}")
    here, _ = await join(http, a, session)
    there, _ = await join(http, b, session)
    _victim, doomed = await join(http, victim_replica, session)
    assert doomed["connection_count"] == 3
    for browser in (here, there):
        await browser.expect("presence", event="joined", connection_id=doomed["connection_id"])

    victim_replica.kill()
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
    notice = await published.next(REPORT_WITHIN_S, event="left")
    assert (notice["connection_id"], notice["connection_count"]) == (doomed["connection_id"], 2)
    assert time.monotonic() - killed_at < REPORT_WITHIN_S
    _late, snapshot = await join(http, b, session)
    assert snapshot["connection_count"] == 3
    assert doomed["connection_id"] not in {p["connection_id"] for p in snapshot["peers"]}
    await published.stop()


async def test_sigterm_turns_readyz_503_at_once_then_closes_sockets_with_1012(
    replicas: tuple[Service, Service], start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    stopping = await start_replica(SHUTDOWN_DELAY_S="1")
    session = new_session()
    survivor, _ = await join(http, replicas[0], session)
    first, one = await join(http, stopping, session)
    second, two = await join(http, stopping, session)
    stopping.signal(signal.SIGTERM)
    signalled_at = time.monotonic()

    async def unready() -> bool:
        return await http_status(f"{stopping.http}/readyz") == 503

    await wait_until(unready, 0.8, interval=0.02, what="/readyz 503 at once, well inside the 1 s delay")
    assert await http_status(f"{stopping.http}/healthz") == 200
    for browser in (first, second):
        assert (await browser.expect_close(timeout=10))[0] == 1012
    assert time.monotonic() - signalled_at >= 1.0  # sockets were kept through SHUTDOWN_DELAY_S
    gone = {(await survivor.expect("presence", event="left"))["connection_id"] for _ in range(2)}
    assert gone == {one["connection_id"], two["connection_id"]}
    assert await stopping.wait_exit(timeout=15) == 0


async def test_state_survives_a_restart_of_every_gateway_of_the_session(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    # Only these two replicas ever hold a socket of the session, so nothing else can keep it alive.
    a, b = await start_replica(), await start_replica()
    session = new_session()
    one, _ = await join(http, a, session)
    two, _ = await join(http, b, session)
    await one.send("state_update", {"patch": {"score": {"red": 3}}})
    await two.send("state_update", {"patch": {"score": {"blue": 1}}})
    for browser in (one, two):
        await browser.expect("state_update", version=2)
    for replica in (a, b):
        replica.signal(signal.SIGTERM)
    for browser in (one, two):
        assert (await browser.expect_close(timeout=10))[0] == 1012
    for replica in (a, b):
        assert await replica.wait_exit(timeout=15) == 0
    _back, snapshot = await join(http, await start_replica(), session)
    assert (snapshot["version"], snapshot["state"]) == (2, {"score": {"red": 3, "blue": 1}})
    assert snapshot["connection_count"] == 1
