"""The MiniApp internal API on NATS (DESIGN sections 4 and 5): reply shapes, server-sourced
updates, session reads across replicas, and presence events for backend consumers."""

from __future__ import annotations

from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from tests.harness.bus import assert_error, request, subscribe
from tests.harness.miniapp import join, new_session, new_user
from tests.harness.proc import Service, wait_until

STATE_UPDATE = "miniapp.sessions.state_update"
GET = "miniapp.sessions.get"


async def test_server_update_reaches_every_replica_and_replies_with_the_version(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    one, _ = await join(http, replicas[0], session)
    two, _ = await join(http, replicas[1], session)
    assert await request(nc, STATE_UPDATE, {"session_id": session, "patch": {"round": 1}}) == {
        "ok": True,
        "version": 1,
    }
    for browser in (one, two):
        assert await browser.expect("state_update") == {
            "patch": {"round": 1},
            "version": 1,
            "source": "server",
        }
    reply = await request(nc, STATE_UPDATE, {"session_id": session, "patch": {"round": 2}, "base_version": 1})
    assert reply == {"ok": True, "version": 2}
    for browser in (one, two):
        await browser.expect("state_update", version=2)
        await browser.close()


async def test_server_update_with_a_stale_base_version_is_refused_and_changes_nothing(
    replicas: tuple[Service, Service], nc: NATS
) -> None:
    session = new_session()
    assert (await request(nc, STATE_UPDATE, {"session_id": session, "patch": {"a": 1}}))["ok"] is True
    reply = await request(nc, STATE_UPDATE, {"session_id": session, "patch": {"a": 2}, "base_version": 0})
    assert (reply["ok"], reply["error"]["code"], reply["error"]["version"]) == (False, "version_conflict", 1)
    read = await request(nc, GET, {"session_id": session})
    assert (read["state"], read["version"]) == ({"a": 1}, 1)


async def test_get_reports_state_version_and_peers_across_replicas(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    empty = {"ok": True, "state": {}, "version": 0, "connection_count": 0, "peers": [], "members": None}
    assert await request(nc, GET, {"session_id": session}) == empty
    one, first = await join(http, replicas[0], session)
    two, second = await join(http, replicas[1], session)
    await one.send("state_update", {"patch": {"k": "v"}})
    await two.expect("state_update", version=1)
    peers = {(c["user_id"], c["connection_id"]) for c in (first, second)}
    for _ in range(4):  # queue group: whichever replica answers, the answer is the same
        reply = await request(nc, GET, {"session_id": session})
        assert set(reply) == {"ok", "state", "version", "connection_count", "peers", "members"}
        assert (reply["ok"], reply["state"], reply["version"], reply["connection_count"]) == (
            True,
            {"k": "v"},
            1,
            2,
        )
        assert {(p["user_id"], p["connection_id"]) for p in reply["peers"]} == peers
    for browser in (one, two):
        await browser.close()

    async def nobody_left() -> bool:
        reply = await request(nc, GET, {"session_id": session})
        return bool(reply == {**empty, "state": {"k": "v"}, "version": 1})

    await wait_until(nobody_left, 5, what="count 0 and no peers once both sockets closed")


async def test_get_answers_the_same_whichever_replica_holds_the_sockets(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    _browser, connected = await join(http, replicas[1], session)
    peer = {"user_id": connected["user_id"], "connection_id": connected["connection_id"]}
    for _ in range(6):  # the replica without a socket in the session answers some of these
        reply = await request(nc, GET, {"session_id": session})
        assert reply == {
            "ok": True,
            "state": {},
            "version": 0,
            "connection_count": 1,
            "peers": [peer],
            "members": None,
        }


async def test_bad_requests_get_ok_false_with_invalid_request(
    replicas: tuple[Service, Service], nc: NATS
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
        assert_error(await request(nc, STATE_UPDATE, body), "invalid_request")
    for body in (b"{", {}, {"session_id": "*"}, {"session_id": "x" * 129}):
        assert_error(await request(nc, GET, body), "invalid_request")


async def test_presence_events_are_published_for_backend_consumers(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession, nc: NATS
) -> None:
    session = new_session()
    published = await subscribe(nc, f"miniapp.presence.{session}")
    user = new_user()
    one, first = await join(http, replicas[0], session, user)
    joined = await published.next(event="joined")
    assert joined == {
        "session_id": session,
        "event": "joined",
        "user_id": user,
        "connection_id": first["connection_id"],
        "connection_count": 1,
        "at": joined["at"],
    }
    assert joined["at"]
    two, second = await join(http, replicas[1], session)
    joined = await published.next(event="joined")
    assert (joined["connection_id"], joined["connection_count"]) == (second["connection_id"], 2)
    await two.send("typing", {"is_typing": True})  # typing is not a presence change worth publishing
    await one.expect("presence", event="typing")
    await one.close()
    left = await published.next(event="left")
    assert (left["session_id"], left["user_id"], left["connection_id"], left["connection_count"]) == (
        session,
        user,
        first["connection_id"],
        1,
    )
    await two.close()
    left = await published.next(event="left")
    assert (left["connection_id"], left["connection_count"]) == (second["connection_id"], 0)
    assert [e["event"] for e in published.seen] == ["joined", "joined", "left", "left"]
    await published.stop()
