"""A session write the broker cannot take: it waits for the store, then the sender is told, and
its socket goes on being read meanwhile.
(Not in DESIGN: it needs a broker of its own whose session bucket the test removes underneath.)"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import nats

from shared.protocol import subjects
from tests.harness.miniapp import make_token, new_session, new_user
from tests.harness.proc import NatsServer
from tests.harness.ws import connect
from tests.integration import apps


async def test_a_write_the_store_never_takes_waits_10_s_then_is_unavailable_and_reading_goes_on(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """No stream answers (it is gone): the updates wait for the store, in order, while the socket is
    read and answered, and each is refused `unavailable` once it has waited 10 s."""
    broker = NatsServer(tmp_path)
    broker.start()
    gateway = await apps.miniapp_gateway(broker.url)
    nc = await nats.connect(broker.url)
    try:
        token = make_token(new_user(), secret=apps.JWT_SECRET, aud="authenticated")
        browser = await connect(http, f"{gateway.ws}/ws/miniapp/{new_session()}?token={token}")
        await browser.expect("connected")
        await nc.jetstream().delete_stream(f"KV_{subjects.MINIAPP_SESSIONS_BUCKET}")
        sent = time.monotonic()
        await browser.send("state_update", {"patch": {"a": 1}, "client_msg_id": "m1"})
        await browser.send("state_update", {"patch": {"a": 2}, "client_msg_id": "m2"})
        await browser.ping_pong()  # the reader is not stuck behind the waiting writes
        refused = [await browser.expect("error", timeout=15) for _ in range(2)]
        answers = [(e["code"], e["client_msg_id"]) for e in refused]
        assert answers == [("unavailable", "m1"), ("unavailable", "m2")]
        assert time.monotonic() - sent >= 9.5, "refused before waiting for the store"
        await browser.ping_pong()
        await browser.close()
    finally:
        await nc.close()
        await gateway.stop()
        broker.stop()
