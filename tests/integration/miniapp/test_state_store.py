"""A session write the broker cannot take: the sender is told, and its socket goes on being read.
(Not in DESIGN: it needs a broker of its own whose session bucket the test removes underneath.)"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import nats

from shared.protocol import subjects
from tests.harness.miniapp import make_token, new_session, new_user
from tests.harness.proc import NatsServer
from tests.harness.ws import connect
from tests.integration import apps


async def test_a_write_the_broker_refuses_is_answered_unavailable_and_the_socket_keeps_reading(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    broker = NatsServer(tmp_path)
    broker.start()
    gateway = await apps.miniapp_gateway(broker.url)
    nc = await nats.connect(broker.url)
    try:
        token = make_token(new_user(), secret=apps.JWT_SECRET, aud="authenticated")
        browser = await connect(http, f"{gateway.ws}/ws/miniapp/{new_session()}?token={token}")
        await browser.expect("connected")
        await nc.jetstream().delete_stream(f"KV_{subjects.MINIAPP_SESSIONS_BUCKET}")
        await browser.send("state_update", {"patch": {"a": 1}, "client_msg_id": "m1"})
        error = await browser.expect("error", timeout=10)
        assert (error["code"], error["client_msg_id"]) == ("unavailable", "m1"), error
        await browser.ping_pong()  # the reader did not stay stuck on the failed write
        await browser.send("state_update", {"patch": {"a": 2}, "client_msg_id": "m2"})
        assert (await browser.expect("error", timeout=10))["client_msg_id"] == "m2"
        await browser.close()
    finally:
        await nc.close()
        await gateway.stop()
        broker.stop()
