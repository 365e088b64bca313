"""Dispatcher failover (DESIGN section 4: "failover after a replica dies takes at most 15 s"): the
replica that runs an agent's timers dies without a word, and another runs them."""

from __future__ import annotations

import time
from pathlib import Path

import nats

from services.command_dispatcher.app import DISPATCHER
from tests.harness.edge import edge_socket, make_token, submit_ok
from tests.harness.proc import NatsServer, wait_until
from tests.integration import apps


async def test_the_timers_of_a_dead_replicas_agents_fire_on_another_within_15_s(
    tmp_path: Path, agent: str
) -> None:
    broker = NatsServer(tmp_path)  # its own broker: only these two replicas share the agents
    broker.start()
    replicas = [await apps.dispatcher(broker.url), await apps.dispatcher(broker.url)]
    gateway = await apps.edge_gateway(broker.url)
    nc = await nats.connect(broker.url)
    try:
        memberships = [r.app[DISPATCHER].membership for r in replicas]
        await wait_until(lambda: all(len(m.leases.live) == 2 for m in memberships), 10, what="two replicas")
        owner = next(r for r, m in zip(replicas, memberships, strict=True) if m.owns(agent))
        async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)) as ws:
            cid = await submit_ok(nc, agent)
            assert (await ws.expect("command"))["command_id"] == cid
            # The owner dies: its work stops and its NATS connection drops; its lease is left to expire.
            await owner.app[DISPATCHER].tasks.close()
            await owner.nc.close()
            died = time.monotonic()
            # Not acked: the redelivery is a timer, and only the survivor can fire it now.
            assert (await ws.expect("command", timeout=20))["command_id"] == cid
            assert time.monotonic() - died <= 15
    finally:
        await nc.close()
        await gateway.stop()
        for replica in replicas:
            await replica.stop()
        broker.stop()
