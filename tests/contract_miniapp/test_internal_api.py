"""The MiniApp internal API on NATS (DESIGN sections 4 and 5): reply shapes, server-sourced
updates, session reads across replicas, and presence events for backend consumers."""

from __future__ import annotations

from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from tests.contract_miniapp.support import Replica, call, join, listen, new_session, new_user

STATE_UPDATE = "miniapp.sessions.state_update"
GET = "miniapp.sessions.get"


def assert_error(reply: dict[str, Any], code: str) -> None:
    assert reply["ok"] is False, reply
    assert set(reply) == {"ok", "error"}
    assert reply["error"]["code"] == code and isinstance(reply["error"]["message"], str)


async def test_server_update_reaches_every_replica_and_replies_with_the_version(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    one, _ = await join(http, replicas[0], session)
    two, _ = await join(http, replicas[1], session)
    reply = await call(bus, STATE_UPDATE, {"session_id": session, "patch": {"round": 1}})
    assert reply == {"ok": True, "version": 1}
    for browser in (one, two):
        update = await browser.expect("state_update")
        assert update == {"patch": {"round": 1}, "version": 1, "source": "server"}
    reply = await call(bus, STATE_UPDATE, {"session_id": session, "patch": {"round": 2}, "base_version": 1})
    assert reply == {"ok": True, "version": 2}
    await one.expect("state_update", version=2)
    await two.expect("state_update", version=2)
    for browser in (one, two):
        await browser.close()


async def test_server_update_with_a_stale_base_version_is_refused_and_changes_nothing(
    replicas: tuple[Replica, Replica], bus: NATS
) -> None:
    session = new_session()
    assert (await call(bus, STATE_UPDATE, {"session_id": session, "patch": {"a": 1}}))["ok"] is True
    reply = await call(bus, STATE_UPDATE, {"session_id": session, "patch": {"a": 2}, "base_version": 0})
    assert reply["ok"] is False and reply["error"]["code"] == "version_conflict"
    read = await call(bus, GET, {"session_id": session})
    assert read["state"] == {"a": 1} and read["version"] == 1


async def test_get_reports_state_version_and_peers_across_replicas(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    empty = await call(bus, GET, {"session_id": session})
    assert empty == {"ok": True, "state": {}, "version": 0, "connection_count": 0, "peers": []}
    one, first = await join(http, replicas[0], session)
    two, second = await join(http, replicas[1], session)
    await one.send("state_update", {"patch": {"k": "v"}})
    await two.expect("state_update", version=1)
    expected_peers = {
        (first["user_id"], first["connection_id"]),
        (second["user_id"], second["connection_id"]),
    }
    for _ in range(4):  # queue group: whichever replica answers, the answer is the same
        reply = await call(bus, GET, {"session_id": session})
        assert set(reply) == {"ok", "state", "version", "connection_count", "peers"}
        assert reply["ok"] is True and reply["state"] == {"k": "v"} and reply["version"] == 1
        assert reply["connection_count"] == 2
        assert {(p["user_id"], p["connection_id"]) for p in reply["peers"]} == expected_peers
    for browser in (one, two):
        await browser.close()


async def test_get_answers_the_same_whichever_replica_holds_the_sockets(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    browser, connected = await join(http, replicas[1], session)
    peer = {"user_id": connected["user_id"], "connection_id": connected["connection_id"]}
    for _ in range(6):  # the replica without a socket in the session answers some of these
        reply = await call(bus, GET, {"session_id": session})
        assert reply == {"ok": True, "state": {}, "version": 0, "connection_count": 1, "peers": [peer]}
    await browser.close()


async def test_bad_requests_get_ok_false_with_invalid_request(
    replicas: tuple[Replica, Replica], bus: NATS
) -> None:
    bad_updates: list[Any] = [
        b"not json",
        {},
        {"session_id": "a.b", "patch": {}},
        {"session_id": "", "patch": {}},
        {"session_id": new_session()},
        {"session_id": new_session(), "patch": [1]},
        {"session_id": new_session(), "patch": {}, "base_version": "1"},
        {"session_id": new_session(), "patch": {}, "base_version": -1},
    ]
    for body in bad_updates:
        assert_error(await call(bus, STATE_UPDATE, body), "invalid_request")
    for body in (b"{", {}, {"session_id": "*"}, {"session_id": "x" * 129}):
        assert_error(await call(bus, GET, body), "invalid_request")


async def test_presence_events_are_published_for_backend_consumers(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession, bus: NATS
) -> None:
    session = new_session()
    published = await listen(bus, f"miniapp.presence.{session}")
    user = new_user()
    one, first = await join(http, replicas[0], session, user)
    joined = await published.next(event="joined")
    assert set(joined) == {"session_id", "event", "user_id", "connection_id", "connection_count", "at"}
    assert joined["session_id"] == session and joined["at"]
    assert (joined["user_id"], joined["connection_id"], joined["connection_count"]) == (
        user,
        first["connection_id"],
        1,
    )
    two, second = await join(http, replicas[1], session)
    joined = await published.next(event="joined")
    assert joined["connection_id"] == second["connection_id"] and joined["connection_count"] == 2
    await one.close()
    left = await published.next(event="left")
    assert left["connection_id"] == first["connection_id"] and left["user_id"] == user
    assert left["connection_count"] == 1 and left["session_id"] == session
    await two.close()
    left = await published.next(event="left")
    assert left["connection_id"] == second["connection_id"] and left["connection_count"] == 0
    await published.stop()
