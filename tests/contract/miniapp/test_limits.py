"""Limits (DESIGN section 5): frame size (1009), state size (`state_too_large`), frame rate
(`rate_limited`, then 1008), the connection cap counted across replicas (4029) and slow readers (1013)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.bus import request
from tests.harness.miniapp import CAP, join, make_token, new_session, new_user, open_socket, socket_url
from tests.harness.proc import Service
from tests.harness.ws import Socket, fragmented_message_close, frame_of_size

KIB = 1024


async def outcome(browser: Socket) -> str:
    """ "in" for a socket admitted to its session, else its close code."""
    frame = await browser.next()
    return "in" if frame is not None and frame["type"] == "connected" else f"{browser.close_code}"


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_frame_of_exactly_64_kib_is_accepted(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, compress: int
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), make_token(new_user()), compress)
    await browser.expect("connected")
    await browser.send_raw(frame_of_size("state_update", 64 * KIB))
    assert (await browser.expect("state_update"))["version"] == 1


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_frame_over_64_kib_closes_1009(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, compress: int
) -> None:
    session = new_session()
    browser = await open_socket(http, replicas[1], session, make_token(new_user()), compress)
    await browser.expect("connected")
    other, _ = await join(http, replicas[0], session)
    await browser.send_raw(frame_of_size("state_update", 64 * KIB + 1))
    assert (await browser.expect_close())[0] == 1009
    await other.expect("presence", event="left")
    assert not [f for f in other.frames if f["type"] == "state_update"]


async def test_a_message_over_64_kib_in_fragments_closes_1009(replicas: tuple[Service, Service]) -> None:
    url = socket_url(replicas[0], new_session(), make_token(new_user()))
    assert await fragmented_message_close(url, {}, [40 * KIB, 30 * KIB]) == 1009


async def test_state_over_256_kib_is_state_too_large_and_leaves_the_state_unchanged(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    browser, _ = await join(http, replicas[0], session)
    chunk = "y" * (60 * KIB)
    for n in range(4):  # about 240 KiB: still allowed
        await browser.send("state_update", {"patch": {f"p{n}": chunk}})
        await browser.expect("state_update", version=n + 1)
    await browser.send("state_update", {"patch": {"p4": chunk}, "client_msg_id": "big"})
    error = await browser.expect("error")
    assert (error["code"], error["client_msg_id"]) == ("state_too_large", "big")
    reply = await request(nc, "miniapp.sessions.get", {"session_id": session})
    assert (reply["ok"], reply["version"], set(reply["state"])) == (True, 4, {"p0", "p1", "p2", "p3"})
    server = await request(
        nc, "miniapp.sessions.state_update", {"session_id": session, "patch": {"p5": chunk}}
    )
    assert server["ok"] is False and server["error"]["code"] == "state_too_large"
    # Shrinking still works, and the next version is 5: nothing was spent on the refusals.
    await browser.send("state_update", {"patch": {"p0": None}})
    assert (await browser.expect("state_update"))["version"] == 5


async def test_frames_past_the_rate_are_rate_limited_and_sustained_abuse_closes_1008(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    browser, _ = await join(http, replicas[1], new_session())
    for n in range(300):
        await browser.send("ping", {"client_msg_id": f"p{n}"})
    assert (await browser.expect_close(timeout=10))[0] == 1008
    assert [f["type"] for f in browser.frames].count("pong") >= 60  # the burst
    limited = [f["data"] for f in browser.frames if f["type"] == "error"]
    assert limited and {e["code"] for e in limited} == {"rate_limited"}


async def test_rate_limited_error_names_the_refused_frame(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    browser, _ = await join(http, replicas[0], new_session())
    for n in range(70):
        await browser.send("state_update", {"patch": {"n": n}, "client_msg_id": f"m{n}"})
    assert (await browser.expect("error", code="rate_limited")).get("client_msg_id", "").startswith("m")


async def test_connection_cap_counts_every_replica_and_closes_4029(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    # Concurrent joins through both replicas: exactly CAP get in.
    attempts = await asyncio.gather(
        *(open_socket(http, (a, b)[n % 2], session, make_token(new_user())) for n in range(CAP + 3))
    )

    outcomes = await asyncio.gather(*(outcome(x) for x in attempts))
    assert sorted(outcomes) == ["4029"] * 3 + ["in"] * CAP
    assert {x.close_reason for x, o in zip(attempts, outcomes, strict=True) if o != "in"} == {"session full"}
    admitted = [x for x, o in zip(attempts, outcomes, strict=True) if o == "in"]
    for replica in (a, b):
        extra = await open_socket(http, replica, session, make_token(new_user()))
        assert await extra.expect_close() == (4029, "session full")
    # A place freed on one replica can be taken through the other.
    await admitted[0].close()
    await admitted[1].expect("presence", event="left")
    _late, connected = await join(http, b, session)
    assert connected["connection_count"] == CAP


async def test_one_user_holds_at_most_5_sockets_of_a_session_across_replicas(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """MINIAPP_MAX_SOCKETS_PER_USER at its default (5), under a session cap high enough not to
    matter: one user's sixth socket and later are closed 4029, and others still get in.
    Was: one listed member could take all 200 places."""
    a, b = [await start_replica(MAX_CONNECTIONS_PER_SESSION="50") for _ in range(2)]
    session, greedy = new_session(), new_user()
    attempts = await asyncio.gather(
        *(open_socket(http, (a, b)[n % 2], session, make_token(greedy)) for n in range(8))
    )
    outcomes = await asyncio.gather(*(outcome(x) for x in attempts))
    assert sorted(outcomes) == ["4029"] * 3 + ["in"] * 5
    refused = {x.close_reason for x, o in zip(attempts, outcomes, strict=True) if o != "in"}
    assert refused == {"too many connections for this user"}
    other, connected = await join(http, b, session)
    assert connected["connection_count"] == 6
    # A socket the user closes frees one of its places.
    await next(x for x, o in zip(attempts, outcomes, strict=True) if o == "in").close()
    await other.expect("presence", event="left")
    _again, connected = await join(http, a, session, greedy)
    assert connected["connection_count"] == 6


async def test_client_too_slow_to_read_is_closed_1013_and_the_others_keep_up(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    slow, _ = await join(http, replicas[0], session)
    reader, _ = await join(http, replicas[0], session)
    updates = 200  # 60 KiB each: about 12 MiB, past any socket buffer plus the 1 MiB outbox
    chunk = "z" * (60 * KIB)
    reading = asyncio.create_task(reader.collect("state_update", updates, timeout=20))
    for n in range(updates):
        body = {"session_id": session, "patch": {"big": f"{n}{chunk}"}}
        assert (await request(nc, "miniapp.sessions.state_update", body))["ok"] is True
    assert [u["version"] for u in await reading] == list(range(1, updates + 1))
    assert (await slow.expect_close(timeout=10))[0] == 1013  # reads what was buffered, then the close
    assert len([f for f in slow.frames if f["type"] == "state_update"]) < updates
