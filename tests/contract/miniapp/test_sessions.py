"""Life in a session across two replicas (DESIGN section 5): presence, state updates in version
order to everyone, actions and typing to the others, ping, late joiners."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from tests.harness.bus import assert_ok, request, subscribe
from tests.harness.miniapp import join, new_session, new_user
from tests.harness.proc import Service
from tests.harness.ws import Socket


async def four_browsers(
    http: aiohttp.ClientSession, replicas: tuple[Service, Service], session: str
) -> list[tuple[Socket, dict[str, Any]]]:
    """Two sockets on each replica, every `joined` already read by everyone."""
    joined: list[tuple[Socket, dict[str, Any]]] = []
    for replica in (replicas[0], replicas[1], replicas[0], replicas[1]):
        browser, connected = await join(http, replica, session)
        for earlier, _ in joined:
            await earlier.expect("presence", event="joined", connection_id=connected["connection_id"])
        joined.append((browser, connected))
    return joined


async def test_joined_and_left_reach_the_others_on_every_replica_with_counts(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    first, _ = await join(http, a, session)
    local, _ = await join(http, a, session)
    await first.expect("presence", event="joined")
    user = new_user()
    remote, connected = await join(http, b, session, user)
    expected = {
        "event": "joined",
        "user_id": user,
        "connection_id": connected["connection_id"],
        "connection_count": 3,
    }
    assert await first.expect("presence", event="joined", user_id=user) == expected
    assert await local.expect("presence", event="joined", user_id=user) == expected

    await remote.close()
    gone = {**expected, "event": "left", "connection_count": 2}
    assert await first.expect("presence", event="left") == gone
    assert await local.expect("presence", event="left") == gone
    await local.close()
    left = await first.expect("presence", event="left")
    assert left["connection_count"] == 1


async def test_every_connection_gets_every_update_in_version_order_with_client_msg_ids(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    session = new_session()
    browsers = await four_browsers(http, replicas, session)
    per_sender = 5

    async def send_all(index: int, browser: Socket) -> None:
        for n in range(per_sender):
            await browser.send(
                "state_update", {"patch": {f"k{index}": n, "last": index}, "client_msg_id": f"m-{index}-{n}"}
            )

    await asyncio.gather(*(send_all(i, b) for i, (b, _) in enumerate(browsers)))
    total = per_sender * len(browsers)
    by_connection = {c["connection_id"]: (c["user_id"], i) for i, (_, c) in enumerate(browsers)}
    received = [await b.collect("state_update", total) for b, _ in browsers]
    for updates in received:
        assert [u["version"] for u in updates] == list(range(1, total + 1))
        assert updates == received[0]  # the same stream, sender included
    for update in received[0]:
        user_id, index = by_connection[update["connection_id"]]
        assert update["source"] == "peer" and update["user_id"] == user_id
        assert update["client_msg_id"].startswith(f"m-{index}-")
        assert set(update) == {"patch", "version", "source", "user_id", "connection_id", "client_msg_id"}
    # Each sender's own updates come back in the order it sent them.
    for index in range(len(browsers)):
        mine = [u["client_msg_id"] for u in received[0] if u["client_msg_id"].startswith(f"m-{index}-")]
        assert mine == [f"m-{index}-{n}" for n in range(per_sender)]
    _late, snapshot = await join(http, replicas[1], session)
    assert snapshot["version"] == total
    assert snapshot["state"] == {f"k{i}": per_sender - 1 for i in range(4)} | {
        "last": received[0][-1]["patch"]["last"]
    }


async def test_update_is_an_rfc7396_merge_patch_and_the_late_joiner_gets_the_full_state(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    writer, _ = await join(http, a, session)
    steps: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"a": {"b": 1, "c": [1, None]}, "d": "x"}, {"a": {"b": 1, "c": [1, None]}, "d": "x"}),
        ({"a": {"b": None, "e": {"f": None}}, "d": None}, {"a": {"c": [1, None], "e": {}}}),
        ({"a": [1, 2]}, {"a": [1, 2]}),
        ({"a": {"z": None}}, {"a": {}}),
        ({}, {"a": {}}),
    ]
    for version, (patch, _) in enumerate(steps, start=1):
        await writer.send("state_update", {"patch": patch})
        update = await writer.expect("state_update", version=version)
        assert update["patch"] == patch and "client_msg_id" not in update
    late, snapshot = await join(http, b, session)
    assert snapshot["state"] == steps[-1][1] and snapshot["version"] == len(steps)
    for version, (patch, _) in enumerate(steps[:2], start=len(steps) + 1):
        await writer.send("state_update", {"patch": patch})
        await late.expect("state_update", version=version)
    _late2, snapshot = await join(http, a, session)
    assert snapshot["state"] == steps[1][1]


async def test_base_version_must_be_current_else_version_conflict_with_the_current_version(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    a, b = replicas
    session = new_session()
    one, _ = await join(http, a, session)
    two, _ = await join(http, b, session)
    await one.send("state_update", {"patch": {"x": 1}, "base_version": 0})
    await two.expect("state_update", version=1)
    await two.send("state_update", {"patch": {"x": 2}, "base_version": 0, "client_msg_id": "stale"})
    error = await two.expect("error")
    assert error["code"] == "version_conflict" and error["version"] == 1
    assert error["client_msg_id"] == "stale"
    await two.send("state_update", {"patch": {"x": 3}, "base_version": 7})
    error = await two.expect("error")
    assert error["code"] == "version_conflict" and error["version"] == 1 and "client_msg_id" not in error
    await two.send("state_update", {"patch": {"x": 4}, "base_version": 1, "client_msg_id": "ok"})
    update = await one.expect("state_update", version=2)
    assert update["client_msg_id"] == "ok" and update["patch"] == {"x": 4}
    assert [f["data"]["version"] for f in one.frames if f["type"] == "state_update"] == [1, 2]


async def test_current_base_version_is_accepted_right_after_a_server_update_on_any_replica(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    a, b = replicas
    session = new_session()
    here, _ = await join(http, a, session)
    there, _ = await join(http, b, session)
    version = 0
    for n in range(20):
        # A server-sourced update (any replica answers), then a peer update based on its version:
        # that version is current, whatever the socket's replica has fanned out so far.
        version = (await _server_update(nc, session, {"s": n}, version))["version"]
        browser = (here, there)[n % 2]
        await browser.send(
            "state_update", {"patch": {"p": n}, "base_version": version, "client_msg_id": f"c{n}"}
        )
        async with asyncio.timeout(5):
            while True:
                frame = await browser.next()
                assert frame is not None and frame["type"] != "error", frame
                if frame["type"] == "state_update" and frame["data"].get("client_msg_id") == f"c{n}":
                    break
        assert frame["data"]["version"] == version + 1
        version += 1


async def _server_update(nc: NATS, session: str, patch: dict[str, Any], base: int) -> dict[str, Any]:
    body = {"session_id": session, "patch": patch, "base_version": base}
    return assert_ok(await request(nc, "miniapp.sessions.state_update", body))


async def test_action_goes_to_every_other_connection_and_to_miniapp_actions(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    published = await subscribe(nc, f"miniapp.actions.{session}")
    browsers = await four_browsers(http, replicas, session)
    sender, connected = browsers[0]
    payload = {"move": "e4", "nested": {"n": None}, "list": [1, None]}
    await sender.send("action", {"action": "play", "payload": payload, "client_msg_id": "a1"})
    expected = {
        "action": "play",
        "payload": payload,
        "user_id": connected["user_id"],
        "connection_id": connected["connection_id"],
    }
    for other, _ in browsers[1:]:
        assert await other.expect("action") == expected
    notice = await published.next()
    assert set(notice) == {"session_id", "user_id", "connection_id", "action", "payload", "at"}
    assert notice["session_id"] == session and notice["at"]
    assert {k: notice[k] for k in expected} == expected
    await sender.send("ping")
    await sender.expect("pong")
    assert not [f for f in sender.frames if f["type"] == "action"]
    await published.stop()


async def test_action_payload_is_relayed_even_when_null(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    published = await subscribe(nc, f"miniapp.actions.{session}")
    sender, _ = await join(http, replicas[0], session)
    other, _ = await join(http, replicas[1], session)
    await sender.send("action", {"action": "ready", "payload": None})
    relayed = await other.expect("action")
    assert "payload" in relayed and relayed["payload"] is None
    notice = await published.next()
    assert "payload" in notice and notice["payload"] is None
    await published.stop()


async def test_typing_reaches_the_others_as_presence_typing_but_not_the_sender(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    session = new_session()
    browsers = await four_browsers(http, replicas, session)
    sender, connected = browsers[1]
    for flag in (True, False):
        await sender.send("typing", {"is_typing": flag})
        expected = {
            "event": "typing",
            "user_id": connected["user_id"],
            "connection_id": connected["connection_id"],
            "connection_count": 4,
            "is_typing": flag,
        }
        for index, (other, _) in enumerate(browsers):
            if index != 1:
                assert await other.expect("presence", event="typing", is_typing=flag) == expected
    await sender.send("ping")
    await sender.expect("pong")
    assert not [f for f in sender.frames if f["data"].get("event") == "typing"]


async def test_nothing_of_one_session_reaches_another_even_for_the_same_user(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    user, here, elsewhere = new_user(), new_session(), new_session()
    writer, _ = await join(http, replicas[0], here, user)
    peer, _ = await join(http, replicas[1], here)
    await writer.expect("presence", event="joined")
    # The same user in another session, on both replicas: it shares a user id, nothing else.
    outsiders = [(await join(http, replica, elsewhere, user))[0] for replica in replicas]
    await writer.send("state_update", {"patch": {"secret": "only here"}})
    await writer.send("action", {"action": "poke", "payload": 1})
    await writer.send("typing", {"is_typing": True})
    # The three travel different ways (the state store, then two relays): in any order.
    seen = await peer.expect_each("state_update", "action", "presence")
    assert seen["state_update"]["patch"] == {"secret": "only here"}
    assert seen["presence"]["event"] == "typing"
    for outsider in outsiders:
        assert await outsider.quiet(0.5, "state_update", "action") == []
        assert not [f for f in outsider.frames if f["data"].get("event") == "typing"]
    _, connected = await join(http, replicas[0], elsewhere)
    assert connected["state"] == {} and connected["version"] == 0


async def test_ping_is_answered_with_pong(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    browser, _ = await join(http, replicas[1], new_session())
    await browser.send("ping")
    assert await browser.expect("pong") == {}


UNUSABLE_FRAMES = [
    "{nope",
    "",
    '{"data": {}}',
    "[1, 2]",
    '{"type": "teleport", "data": {"client_msg_id": "t1"}}',
    '{"type": "state_update", "data": {"patch": [1]}}',
    '{"type": "state_update", "data": {"patch": "x", "client_msg_id": "bad"}}',
    *(
        f'{{"type": "state_update", "data": {{"patch": {{"x": 9}}, "base_version": {v}}}}}'
        for v in ('"1"', "1.5", "true", "-1")
    ),
    '{"type": "action", "data": {"payload": 1}}',
    '{"type": "action", "data": {"action": ""}}',
    '{"type": "typing", "data": {"is_typing": "yes"}}',
    '{"type": "auth", "data": {}}',
]


@pytest.mark.parametrize("frame", UNUSABLE_FRAMES)
async def test_unusable_frame_gets_an_error_changes_nothing_and_the_socket_stays_open(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS, frame: str
) -> None:
    session = new_session()
    browser, _ = await join(http, replicas[0], session)
    other, _ = await join(http, replicas[1], session)
    await browser.expect("presence", event="joined")
    await browser.send("state_update", {"patch": {"x": 1}})
    await other.expect("state_update", version=1)
    await browser.send_raw(frame)
    error = await browser.expect("error")
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), error
    if "client_msg_id" in frame:
        assert error["client_msg_id"] == json.loads(frame)["data"]["client_msg_id"]
    await browser.ping_pong()
    reply = await request(nc, "miniapp.sessions.get", {"session_id": session})
    assert (reply["state"], reply["version"]) == ({"x": 1}, 1)
    assert await other.quiet(0.2, "state_update", "action", "presence") == []


async def test_server_updates_chaining_base_version_through_any_replica_never_conflict(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    # A socket on each replica, so each holds a live view of the session.
    here, _ = await join(http, replicas[0], session)
    there, _ = await join(http, replicas[1], session)
    version = 0
    for n in range(100):
        version = (await _server_update(nc, session, {"n": n}, version))["version"]
    assert version == 100
    for browser in (here, there):
        updates = await browser.collect("state_update", 100)
        assert [u["version"] for u in updates] == list(range(1, 101))
        assert {u["source"] for u in updates} == {"server"}
        assert not any("user_id" in u or "connection_id" in u for u in updates)
        await browser.close()
