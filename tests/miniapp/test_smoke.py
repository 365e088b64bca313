from __future__ import annotations

from tests.miniapp.support import Gateway, join, new_session


async def test_connect_two_replicas(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    session = new_session()
    c1, first = await join(a, session, "u1")
    assert first["connection_count"] == 1
    c2, second = await join(b, session, "u2")
    assert second["connection_count"] == 2
    joined = await c1.expect("presence", event="joined")
    assert joined["user_id"] == "u2"
    await c2.send("state_update", {"patch": {"a": 1}, "client_msg_id": "m1"})
    u1 = await c1.expect("state_update")
    u2 = await c2.expect("state_update")
    assert u1 == u2 and u1["version"] == 1
    await c2.close()
    left = await c1.expect("presence", event="left")
    assert left["connection_count"] == 1
    await c1.close()
