"""Replica leases: a replica that finds its lease taken (it was presumed dead) must not keep serving."""

from __future__ import annotations

import aiohttp

from services.miniapp_gateway.gateway import GATEWAY
from tests.harness.miniapp import make_token, new_session, new_user
from tests.harness.proc import http_status, wait_until
from tests.harness.ws import connect
from tests.integration import apps
from tests.integration.miniapp.conftest import Start


async def test_a_replica_that_lost_its_lease_closes_its_sockets_1012_and_takes_a_new_lease(
    start: Start, http: aiohttp.ClientSession
) -> None:
    gateway = await start()
    presence = gateway.app[GATEWAY].hub.presence
    token = make_token(new_user(), secret=apps.JWT_SECRET, aud="authenticated")
    browser = await connect(http, f"{gateway.ws}/ws/miniapp/{new_session()}?token={token}")
    await browser.expect("connected")
    old = presence.replica_id
    # Another writer has the lease key now, as after an expiry: the next renewal is refused.
    await presence.bucket.put(presence.leases.key(old), b"{}")
    assert (await browser.expect_close())[0] == 1012
    await wait_until(lambda: presence.replica_id != old, 5, what="a new lease")
    assert await http_status(f"{gateway.http}/readyz") == 200
    await presence.bucket.delete(presence.leases.key(old))  # the taker is gone too
