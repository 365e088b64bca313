"""Replica leases: a replica that finds its lease gone (it was presumed dead, as after an election
longer than the lease) takes a new one and writes its connections again, keeping their sockets: a
NATS node lost is a pause, not a disconnect."""

from __future__ import annotations

import aiohttp

from services.miniapp_gateway.gateway import GATEWAY
from tests.harness.miniapp import make_token, new_session, new_user
from tests.harness.proc import http_status, wait_until
from tests.harness.ws import connect
from tests.integration import apps
from tests.integration.miniapp.conftest import Start


async def test_a_replica_that_lost_its_lease_keeps_its_sockets_and_registers_them_again(
    start: Start, http: aiohttp.ClientSession
) -> None:
    gateway = await start()
    presence = gateway.app[GATEWAY].hub.presence
    session = new_session()
    token = make_token(new_user(), secret=apps.JWT_SECRET, aud="authenticated")
    browser = await connect(http, f"{gateway.ws}/ws/miniapp/{session}?token={token}")
    connection_id = (await browser.expect("connected"))["connection_id"]
    old = presence.replica_id
    # Another writer has the lease key now, as after an expiry: the next renewal is refused.
    await presence.bucket.put(presence.leases.key(old), b"{}")
    await wait_until(lambda: presence.replica_id != old, 5, what="a new lease")

    async def registered_again() -> bool:
        entries = await presence.scan_session(session)
        return [(e.connection_id, e.replica_id) for e in entries] == [(connection_id, presence.replica_id)]

    await wait_until(registered_again, 5, what="the connection written under the new lease")
    await browser.ping_pong()
    await browser.send("state_update", {"patch": {"still": "here"}, "client_msg_id": "after"})
    assert (await browser.expect("state_update"))["client_msg_id"] == "after"
    assert browser.close_code is None
    assert await http_status(f"{gateway.http}/readyz") == 200
    await presence.bucket.delete(presence.leases.key(old))  # the taker is gone too
