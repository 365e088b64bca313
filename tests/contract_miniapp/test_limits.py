"""Limits (DESIGN section 5): frame size (1009), state size (`state_too_large`), frame rate
(`rate_limited`, then 1008), the connection cap counted across replicas (4029) and slow readers (1013)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from nats.aio.client import Client as NATS

from tests.contract_miniapp.support import (
    CAP,
    Browser,
    Replica,
    call,
    join,
    make_token,
    new_session,
    new_user,
    open_socket,
)

KIB = 1024


def frame_of_size(size: int) -> str:
    """A valid `state_update` frame of exactly `size` bytes."""
    empty = orjson.dumps({"type": "state_update", "data": {"patch": {"pad": ""}}})
    return orjson.dumps(
        {"type": "state_update", "data": {"patch": {"pad": "x" * (size - len(empty))}}}
    ).decode()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_frame_of_exactly_64_kib_is_accepted(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, compress: int
) -> None:
    browser = await open_socket(http, replicas[0], new_session(), make_token(new_user()), compress)
    await browser.expect("connected")
    frame = frame_of_size(64 * KIB)
    assert len(frame.encode()) == 64 * KIB
    await browser.ws.send_str(frame)
    assert (await browser.expect("state_update"))["version"] == 1
    await browser.close()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_frame_over_64_kib_closes_1009(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, compress: int
) -> None:
    session = new_session()
    browser = await open_socket(http, replicas[1], session, make_token(new_user()), compress)
    await browser.expect("connected")
    other, _ = await join(http, replicas[0], session)
    await browser.ws.send_str(frame_of_size(64 * KIB + 1))
    code, _ = await browser.expect_close()
    assert code == 1009
    await other.expect("presence", event="left")
    assert not [f for f in other.frames if f["type"] == "state_update"]
    await other.close()


async def test_state_over_256_kib_is_state_too_large_and_leaves_the_state_unchanged(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    browser, _ = await join(http, replicas[0], session)
    chunk = "y" * (60 * KIB)
    for n in range(4):  # about 240 KiB: still allowed
        await browser.send("state_update", {"patch": {f"p{n}": chunk}})
        await browser.expect("state_update", version=n + 1)
    await browser.send("state_update", {"patch": {"p4": chunk}, "client_msg_id": "big"})
    error = await browser.expect("error")
    assert error["code"] == "state_too_large" and error["client_msg_id"] == "big"
    reply = await call(bus, "miniapp.sessions.get", {"session_id": session})
    assert reply["ok"] is True and reply["version"] == 4 and set(reply["state"]) == {"p0", "p1", "p2", "p3"}
    server = await call(bus, "miniapp.sessions.state_update", {"session_id": session, "patch": {"p5": chunk}})
    assert server["ok"] is False and server["error"]["code"] == "state_too_large"
    # Shrinking still works, and the next version is 5: nothing was spent on the refusals.
    await browser.send("state_update", {"patch": {"p0": None}})
    assert (await browser.expect("state_update"))["version"] == 5
    await browser.close()


async def test_frames_past_the_rate_are_rate_limited_and_sustained_abuse_closes_1008(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    browser, _ = await join(http, replicas[1], new_session())
    for n in range(300):
        await browser.send("ping", {"client_msg_id": f"p{n}"})
    code, _ = await browser.expect_close(timeout=10)
    assert code == 1008
    types = [f["type"] for f in browser.frames]
    assert types.count("pong") >= 60  # the burst
    limited = [f["data"] for f in browser.frames if f["type"] == "error"]
    assert limited and {e["code"] for e in limited} == {"rate_limited"}


async def test_rate_limited_error_names_the_refused_frame(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    browser, _ = await join(http, replicas[0], new_session())
    for n in range(70):
        await browser.send("state_update", {"patch": {"n": n}, "client_msg_id": f"m{n}"})
    error = await browser.expect("error", code="rate_limited")
    assert error.get("client_msg_id", "").startswith("m")
    await browser.close()


async def test_connection_cap_counts_every_replica_and_closes_4029(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    # Concurrent joins through both replicas: exactly CAP get in.
    attempts = [
        await open_socket(http, (a, b)[n % 2], session, make_token(new_user())) for n in range(CAP + 3)
    ]

    async def outcome(browser: Browser) -> str:
        frame = await browser.next()
        return "in" if frame is not None and frame["type"] == "connected" else f"{browser.close_code}"

    outcomes = await asyncio.gather(*(outcome(x) for x in attempts))
    assert sorted(outcomes) == ["4029"] * 3 + ["in"] * CAP
    refused = [x for x, o in zip(attempts, outcomes, strict=True) if o != "in"]
    assert all(x.close_reason for x in refused)
    admitted = [x for x, o in zip(attempts, outcomes, strict=True) if o == "in"]
    for replica in (a, b):
        extra = await open_socket(http, replica, session, make_token(new_user()))
        assert await extra.expect_close() == (4029, extra.close_reason) and extra.close_reason
    # A place freed on one replica can be taken through the other.
    await admitted[0].close()
    await admitted[1].expect("presence", event="left")
    late, connected = await join(http, b, session)
    assert connected["connection_count"] == CAP
    for browser in [*admitted[1:], late]:
        await browser.close()


async def test_client_too_slow_to_read_is_closed_1013_and_the_others_keep_up(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    slow, _ = await join(http, replicas[0], session)
    reader, _ = await join(http, replicas[0], session)
    updates = 200  # 60 KiB each: about 12 MiB, past any socket buffer plus the 1 MiB outbox
    chunk = "z" * (60 * KIB)

    async def keep_reading() -> list[dict[str, Any]]:
        return await reader.collect("state_update", updates, timeout=20)

    reading = asyncio.create_task(keep_reading())
    for n in range(updates):
        reply = await call(
            bus, "miniapp.sessions.state_update", {"session_id": session, "patch": {"big": f"{n}{chunk}"}}
        )
        assert reply["ok"] is True
    received = await reading
    assert [u["version"] for u in received] == list(range(1, updates + 1))
    code, _ = await slow.expect_close(timeout=10)  # reads what was buffered, then the close
    assert code == 1013
    assert len([f for f in slow.frames if f["type"] == "state_update"]) < updates
    await reader.close()
