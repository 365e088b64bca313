"""Idle sessions are removed after SESSION_IDLE_TTL_S; sessions with sockets are kept alive.
(Not in DESIGN; writing through one replica's store and reading its renewals needs internals.)"""

from __future__ import annotations

import aiohttp
from nats.aio.client import Client as NATS

from services.miniapp_gateway.gateway import GATEWAY
from shared.protocol.miniapp import Source
from tests.harness.bus import request
from tests.harness.miniapp import make_token, new_session, new_user
from tests.harness.proc import wait_until
from tests.harness.ws import connect
from tests.integration import apps
from tests.integration.miniapp.conftest import Start


async def version(nc: NATS, session: str) -> int:
    return int((await request(nc, "miniapp.sessions.get", {"session_id": session}))["version"])


async def test_a_session_nobody_uses_is_removed(start: Start, nc: NATS) -> None:
    gateway = await start(session_idle_ttl_s=1)
    session = new_session()
    # Written through this replica's store: a queue-group request could land on another replica
    # with the default TTL.
    assert await gateway.app[GATEWAY].ctx.store.apply(session, {"x": 1}, None, Source.SERVER) == 1
    assert await version(nc, session) == 1

    async def gone() -> bool:
        return await version(nc, session) == 0

    await wait_until(gone, 10, interval=0.2, what="idle session removed")


async def test_a_session_with_sockets_outlives_the_idle_ttl(
    start: Start, nc: NATS, http: aiohttp.ClientSession
) -> None:
    gateway = await start(session_idle_ttl_s=2)
    session = new_session()
    token = make_token(new_user(), secret=apps.JWT_SECRET, aud="authenticated")
    browser = await connect(http, f"{gateway.ws}/ws/miniapp/{session}?token={token}")
    await browser.expect("connected")
    await browser.send("state_update", {"patch": {"kept": True}})
    await browser.expect("state_update")
    local = gateway.app[GATEWAY].hub.sessions[session]
    renewals: list[int] = [local.revision]

    def renewed_past_the_ttl() -> bool:
        if local.revision != renewals[-1]:
            renewals.append(local.revision)
        return len(renewals) >= 4  # three renewals, one a second: well past the 2 s TTL

    await wait_until(renewed_past_the_ttl, 15, interval=0.1, what="three renewals")
    body = await request(nc, "miniapp.sessions.get", {"session_id": session})
    assert (body["version"], body["state"]) == (1, {"kept": True})
    await browser.ping_pong()
    await browser.close()
