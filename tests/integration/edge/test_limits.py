"""Limits of the edge gateway beyond the contract's: what one authenticated agent can make it hold
or write. The gateway runs in-process on a broker of its own, where the test itself plays the
dispatcher (answering pulls, holding ack batches) so it decides when acks are applied."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.edge_gateway.connection import MAX_ACKS_IN_FLIGHT, STATUS_BURST
from shared.protocol import subjects
from tests.harness.bus import subscribe
from tests.harness.edge import ack, edge_socket, make_token
from tests.harness.proc import NatsServer
from tests.integration import apps

OK = b'{"ok": true}'


class HeldAcks:
    """Plays the dispatcher's ack API: holds every batch until `release()`, then answers at once."""

    def __init__(self) -> None:
        self.held: list[Msg] = []
        self.released = False

    async def on_batch(self, msg: Msg) -> None:
        if self.released:
            await msg.respond(OK)
        else:
            self.held.append(msg)

    async def release(self) -> None:
        self.released = True
        for msg in self.held:
            await msg.respond(OK)
        self.held.clear()


@pytest.fixture
async def alone(tmp_path: Path) -> AsyncIterator[tuple[apps.RunningApp, NATS, HeldAcks]]:
    broker = NatsServer(tmp_path)
    broker.start()
    nc = await nats.connect(broker.url)
    acks = HeldAcks()

    async def no_commands(msg: Msg) -> None:
        await msg.respond(b'{"ok": true, "commands": []}')

    await nc.subscribe(subjects.partition_api("*", "pull"), cb=no_commands)
    await nc.subscribe(subjects.ACKS_SUBMIT, cb=acks.on_batch)
    gateway = await apps.edge_gateway(broker.url, upstream_timeout_s=30)
    try:
        yield gateway, nc, acks
    finally:
        await acks.release()
        await gateway.stop()
        await nc.close()
        broker.stop()


async def test_a_socket_with_too_many_acks_on_their_way_is_not_read_until_some_are_applied(
    alone: tuple[apps.RunningApp, NATS, HeldAcks], agent: str
) -> None:
    gateway, _, acks = alone
    async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)) as ws:
        for _ in range(MAX_ACKS_IN_FLIGHT + 1):
            await ack(ws, str(uuid.uuid4()), "received")
        await ws.send("ping")
        assert await ws.quiet(1.0, "pong") == []  # the reader waits: the ping is not read yet
        await acks.release()
        await ws.expect("pong")
        assert ws.close_code is None


async def test_status_frames_faster_than_an_agent_reports_are_refused_not_written(
    alone: tuple[apps.RunningApp, NATS, HeldAcks], agent: str
) -> None:
    gateway, nc, _ = alone
    statuses = await subscribe(nc, subjects.status(agent))
    sent = 2 * STATUS_BURST
    async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)) as ws:
        for n in range(sent):
            await ws.send("status", {"n": n})
        await ws.ping_pong()
        refused = [f for f in ws.frames if f["type"] == "error"]
        assert refused and all(f["data"]["code"] == "rate_limited" for f in refused)
        kept = await statuses.quiet(0.5)
        assert len(kept) + len(refused) == sent and len(kept) < sent
        await ws.ping_pong()  # still open: a fast reporter is refused, not closed
