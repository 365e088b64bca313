"""Idle sessions are removed after SESSION_IDLE_TTL_S; sessions with sockets are kept alive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from services.miniapp_gateway.gateway import GATEWAY
from shared.protocol import subjects
from shared.protocol.miniapp import Source
from tests.miniapp.support import Gateway, join, new_session
from tests.support import wait_until

Factory = Callable[..., Awaitable[Gateway]]


async def get(nc: NATS, session: str) -> dict[str, Any]:
    msg = await nc.request(subjects.MINIAPP_GET, orjson.dumps({"session_id": session}), timeout=5)
    body: dict[str, Any] = orjson.loads(msg.data)
    return body


async def test_a_session_nobody_uses_is_removed(gateway_factory: Factory, nc: NATS) -> None:
    gateway = await gateway_factory(session_idle_ttl_s=1)
    session = new_session()
    # Written through this replica's store: a queue-group request could land on another replica
    # with the default TTL.
    record = await gateway.app[GATEWAY].ctx.store.apply(session, {"x": 1}, None, Source.SERVER)
    assert record.version == 1 and (await get(nc, session))["version"] == 1

    async def gone() -> bool:
        return bool((await get(nc, session))["version"] == 0)

    await wait_until(gone, timeout=10, interval=0.2)


async def test_a_session_with_sockets_outlives_the_idle_ttl(gateway_factory: Factory, nc: NATS) -> None:
    gateway = await gateway_factory(session_idle_ttl_s=2)
    session = new_session()
    client, _ = await join(gateway, session)
    await client.send("state_update", {"patch": {"kept": True}})
    await client.expect("state_update")
    local = gateway.app[GATEWAY].hub.sessions[session]
    renewals: list[int] = [local.revision]

    def renewed_past_the_ttl() -> bool:
        if local.revision != renewals[-1]:
            renewals.append(local.revision)
        return len(renewals) >= 4  # three renewals, one a second: well past the 2 s TTL

    await wait_until(renewed_past_the_ttl, timeout=15, interval=0.1)
    body = await get(nc, session)
    assert body["version"] == 1 and body["state"] == {"kept": True}
    await client.send("ping")
    await client.expect("pong")
    await client.close()
