"""Multiplayer sessions across two gateway replicas: presence, state, actions, typing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.protocol import subjects
from tests.miniapp.support import Client, Gateway, join, new_session, new_user
from tests.support import wait_until

PER_CLIENT = 12


async def close_all(*clients: Client) -> None:
    for client in clients:
        await client.close()


async def test_connected_counts_and_peers_span_both_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, first = await join(a, session, "alice")
    c2, second = await join(b, session, "bob")
    c3, third = await join(a, session, "carol")
    assert first["connection_count"] == 1
    assert [p["user_id"] for p in first["peers"]] == ["alice"]
    assert second["connection_count"] == 2
    assert {p["user_id"] for p in second["peers"]} == {"alice", "bob"}
    assert third["connection_count"] == 3
    assert {(p["user_id"], p["connection_id"]) for p in third["peers"]} == {
        ("alice", first["connection_id"]),
        ("bob", second["connection_id"]),
        ("carol", third["connection_id"]),
    }
    assert third["session_id"] == session and third["user_id"] == "carol"
    assert third["state"] == {} and third["version"] == 0
    await close_all(c1, c2, c3)


async def test_joined_and_left_reach_every_replica(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, _ = await join(a, session, "alice")
    c2, bob = await join(b, session, "bob")
    joined = await c1.expect("presence", event="joined")
    assert joined == {
        "event": "joined",
        "user_id": "bob",
        "connection_id": bob["connection_id"],
        "connection_count": 2,
    }
    c3, carol = await join(a, session, "carol")
    assert (await c2.expect("presence", event="joined"))["connection_id"] == carol["connection_id"]
    await c2.close()
    for client in (c1, c3):
        left = await client.expect("presence", event="left")
        assert left["connection_id"] == bob["connection_id"] and left["connection_count"] == 2
    await close_all(c1, c3)


async def test_presence_is_published_for_backend_consumers(pair: tuple[Gateway, Gateway], nc: NATS) -> None:
    a, b = pair
    session = new_session()
    events: list[dict[str, Any]] = []

    async def on_presence(msg: Msg) -> None:
        events.append(orjson.loads(msg.data))

    sub = await nc.subscribe(subjects.miniapp_presence(session), cb=on_presence)
    await nc.flush()
    c1, first = await join(a, session, "alice")
    c2, _ = await join(b, session, "bob")
    await c1.close()
    await wait_until(lambda: len(events) == 3, timeout=5)
    assert [(e["event"], e["user_id"], e["connection_count"]) for e in events] == [
        ("joined", "alice", 1),
        ("joined", "bob", 2),
        ("left", "alice", 1),
    ]
    assert events[2]["session_id"] == session and events[2]["connection_id"] == first["connection_id"]
    assert events[2]["at"].endswith("Z")
    await sub.unsubscribe()
    await c2.close()


async def test_state_update_reaches_everyone_with_sender_confirmation(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, _ = await join(a, session, "alice")
    c2, bob = await join(b, session, "bob")
    await c2.send("state_update", {"patch": {"board": {"x": 1}}, "client_msg_id": "m-1"})
    expected = {
        "patch": {"board": {"x": 1}},
        "version": 1,
        "source": "peer",
        "user_id": "bob",
        "connection_id": bob["connection_id"],
        "client_msg_id": "m-1",
    }
    assert await c1.expect("state_update") == expected
    assert await c2.expect("state_update") == expected
    await c1.send("state_update", {"patch": {"board": {"x": None, "y": 2}}, "base_version": 1})
    for client in (c1, c2):
        update = await client.expect("state_update", version=2)
        assert "client_msg_id" not in update and update["patch"] == {"board": {"x": None, "y": 2}}
    await close_all(c1, c2)


async def test_version_conflict_is_refused_and_changes_nothing(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, _ = await join(a, session)
    c2, _ = await join(b, session)
    await c1.send("state_update", {"patch": {"n": 1}})
    await c1.expect("state_update", version=1)
    await c2.send("state_update", {"patch": {"n": 99}, "base_version": 0, "client_msg_id": "stale"})
    error = await c2.expect("error")
    assert error == {
        "code": "version_conflict",
        "message": error["message"],
        "client_msg_id": "stale",
        "version": 1,
    }
    late, snapshot = await join(a, session)
    assert snapshot["state"] == {"n": 1} and snapshot["version"] == 1
    await close_all(c1, c2, late)


async def test_late_joiner_gets_the_full_current_state(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, _ = await join(a, session)
    for i in range(5):
        await c1.send("state_update", {"patch": {f"k{i}": i, "nested": {"last": i}}})
    await c1.expect("state_update", version=5)
    late, snapshot = await join(b, session)
    assert snapshot["version"] == 5
    assert snapshot["state"] == {"k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4, "nested": {"last": 4}}
    await c1.send("state_update", {"patch": {"after": True}})
    assert (await late.expect("state_update"))["version"] == 6
    await close_all(c1, late)


async def test_concurrent_updates_arrive_in_one_order_everywhere(pair: tuple[Gateway, Gateway]) -> None:
    """Several writers on both replicas, many random interleavings: one order, versions +1."""
    a, b = pair
    rng = random.Random(7)
    for _ in range(3):
        session = new_session()
        clients = [(await join(gw, session))[0] for gw in (a, b, a, b)]
        total = PER_CLIENT * len(clients)

        async def write(index: int, client: Client) -> None:
            for n in range(PER_CLIENT):
                await client.send(
                    "state_update", {"patch": {f"c{index}": n}, "client_msg_id": f"{index}-{n}"}
                )
                if rng.random() < 0.5:
                    await asyncio.sleep(0)  # yield to let the other writers interleave differently

        await asyncio.gather(*(write(i, c) for i, c in enumerate(clients)))
        seen: list[list[tuple[int, str]]] = []
        for client in clients:
            updates = [await client.expect("state_update", timeout=10) for _ in range(total)]
            seen.append([(u["version"], u["client_msg_id"]) for u in updates])
        assert [v for v, _ in seen[0]] == list(range(1, total + 1))
        assert all(s == seen[0] for s in seen)
        assert sorted(m for _, m in seen[0]) == sorted(
            f"{i}-{n}" for i in range(4) for n in range(PER_CLIENT)
        )
        final, snapshot = await join(b, session)
        assert snapshot["version"] == total
        assert snapshot["state"] == {f"c{i}": PER_CLIENT - 1 for i in range(4)}
        await close_all(*clients, final)


async def test_action_goes_to_the_others_and_to_nats(pair: tuple[Gateway, Gateway], nc: NATS) -> None:
    a, b = pair
    session = new_session()
    published: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_action(msg: Msg) -> None:
        await published.put(orjson.loads(msg.data))

    sub = await nc.subscribe(subjects.miniapp_actions(session), cb=on_action)
    await nc.flush()
    c1, alice = await join(a, session, "alice")
    c2, _ = await join(b, session, "bob")
    c3, _ = await join(a, session, "carol")
    await c1.send("action", {"action": "vote", "payload": {"option": 2}, "client_msg_id": "a-1"})
    for client in (c2, c3):
        assert await client.expect("action") == {
            "action": "vote",
            "payload": {"option": 2},
            "user_id": "alice",
            "connection_id": alice["connection_id"],
        }
    notice = await asyncio.wait_for(published.get(), 5)
    assert notice["session_id"] == session and notice["action"] == "vote"
    assert notice["user_id"] == "alice" and notice["payload"] == {"option": 2}
    # The sender is not echoed its own action: its next frame is the pong.
    await c1.send("ping")
    frame = await c1.next()
    while frame is not None and frame["type"] == "presence":
        frame = await c1.next()
    assert frame is not None and frame["type"] == "pong"
    await sub.unsubscribe()
    await close_all(c1, c2, c3)


async def test_typing_is_relayed_as_presence_to_the_others(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, alice = await join(a, session, "alice")
    c2, _ = await join(b, session, "bob")
    await c1.send("typing", {"is_typing": True})
    typing = await c2.expect("presence", event="typing")
    assert typing == {
        "event": "typing",
        "user_id": "alice",
        "connection_id": alice["connection_id"],
        "connection_count": 2,
        "is_typing": True,
    }
    await c1.send("ping")
    frame = await c1.next()
    while frame is not None and frame["type"] == "presence" and frame["data"]["event"] == "joined":
        frame = await c1.next()
    assert frame is not None and frame["type"] == "pong"
    await close_all(c1, c2)


async def test_server_sourced_update_over_nats(pair: tuple[Gateway, Gateway], nc: NATS) -> None:
    a, b = pair
    session = new_session()
    c1, _ = await join(a, session)
    c2, _ = await join(b, session)
    reply = await nc.request(
        subjects.MINIAPP_STATE_UPDATE, orjson.dumps({"session_id": session, "patch": {"round": 1}}), timeout=5
    )
    assert orjson.loads(reply.data) == {"ok": True, "version": 1}
    for client in (c1, c2):
        assert await client.expect("state_update") == {
            "patch": {"round": 1},
            "version": 1,
            "source": "server",
        }
    conflict = await nc.request(
        subjects.MINIAPP_STATE_UPDATE,
        orjson.dumps({"session_id": session, "patch": {"round": 2}, "base_version": 0}),
        timeout=5,
    )
    body = orjson.loads(conflict.data)
    assert (
        body["ok"] is False and body["error"]["code"] == "version_conflict" and body["error"]["version"] == 1
    )
    await close_all(c1, c2)


async def test_internal_get_reports_state_and_peers(pair: tuple[Gateway, Gateway], nc: NATS) -> None:
    a, b = pair
    session = new_session()
    user = new_user()
    c1, first = await join(a, session, user)
    await c1.send("state_update", {"patch": {"title": "plan"}})
    await c1.expect("state_update")
    c2, second = await join(b, session, "bob")

    async def get() -> dict[str, Any]:
        msg = await nc.request(subjects.MINIAPP_GET, orjson.dumps({"session_id": session}), timeout=5)
        body: dict[str, Any] = orjson.loads(msg.data)
        return body

    body = await get()
    assert body["ok"] and body["state"] == {"title": "plan"} and body["version"] == 1
    assert body["connection_count"] == 2
    assert {p["connection_id"] for p in body["peers"]} == {first["connection_id"], second["connection_id"]}
    await close_all(c1, c2)
    await wait_until(lambda: _count(get), timeout=5)
    unknown = orjson.loads(
        (await nc.request(subjects.MINIAPP_GET, orjson.dumps({"session_id": new_session()}), timeout=5)).data
    )
    assert unknown == {"ok": True, "state": {}, "version": 0, "connection_count": 0, "peers": []}


async def _count(get: Any) -> bool:
    body = await get()
    return bool(body["connection_count"] == 0)


async def test_internal_api_refuses_bad_requests(pair: tuple[Gateway, Gateway], nc: NATS) -> None:
    bad = [
        (subjects.MINIAPP_GET, {"session_id": "a.b"}),
        (subjects.MINIAPP_GET, {}),
        (subjects.MINIAPP_STATE_UPDATE, {"session_id": new_session(), "patch": [1]}),
        (subjects.MINIAPP_STATE_UPDATE, {"session_id": new_session(), "patch": {}, "base_version": "1"}),
        (subjects.MINIAPP_STATE_UPDATE, {"session_id": "*", "patch": {}}),
    ]
    for subject, request in bad:
        msg = await nc.request(subject, orjson.dumps(request), timeout=5)
        body = orjson.loads(msg.data)
        assert body["ok"] is False and body["error"]["code"] == "invalid_request", (subject, request)
    garbage = orjson.loads((await nc.request(subjects.MINIAPP_GET, b"{nope", timeout=5)).data)
    assert garbage["error"]["code"] == "invalid_request"


async def test_unusable_frames_get_errors_and_change_nothing(pair: tuple[Gateway, Gateway]) -> None:
    a, _ = pair
    session = new_session()
    c1, _ = await join(a, session)
    await c1.send("state_update", {"patch": {"keep": 1}})
    await c1.expect("state_update")
    cases: list[tuple[str, str]] = [
        ("{not json", "invalid_json"),
        ('{"type":"teleport","data":{}}', "unknown_type"),
        ('{"type":"state_update","data":{"patch":[1],"client_msg_id":"p"}}', "invalid_frame"),
        ('{"type":"state_update","data":{"patch":{"x":1},"base_version":"1"}}', "invalid_frame"),
        ('{"type":"action","data":{"payload":1}}', "invalid_frame"),
    ]
    for raw, code in cases:
        await c1.send_raw(raw)
        error = await c1.expect("error")
        assert error["code"] == code, raw
    assert error["code"] == "invalid_frame"
    await c1.send("ping")
    await c1.expect("pong")
    late, snapshot = await join(a, session)
    assert snapshot["state"] == {"keep": 1} and snapshot["version"] == 1
    await close_all(c1, late)
