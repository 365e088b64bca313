"""Dispatcher failover (DESIGN section 4: "failover after a replica dies takes at most 15 s"): the
replica that runs an agent's timers dies without a word, and another runs them."""

from __future__ import annotations

import time
from pathlib import Path

import nats

from services.command_dispatcher.app import DISPATCHER
from shared.protocol import subjects
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
        owners = [r.app[DISPATCHER].ownership for r in replicas]
        partition = subjects.partition_of(agent)
        await wait_until(
            lambda: sum(partition in o.held for o in owners) == 1, 10, what="the agent's partition owned"
        )
        owner = next(r for r, o in zip(replicas, owners, strict=True) if partition in o.held)
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


async def test_a_replica_whose_own_lease_expired_agrees_with_the_others_on_who_is_alive(
    tmp_path: Path,
) -> None:
    broker = NatsServer(tmp_path)
    broker.start()
    replicas = [await apps.dispatcher(broker.url), await apps.dispatcher(broker.url)]
    try:
        leases = [r.app[DISPATCHER].ownership.leases for r in replicas]
        await wait_until(lambda: all(len(lease.live) == 2 for lease in leases), 10, what="two replicas")
        fenced = leases[0].replica_id
        # Its lease is gone (as when it expires during a network pause): the replica sees its own
        # delete marker first, then its renewal is refused and it starts over under a new id.
        await leases[0].bucket.delete(leases[0].key(fenced))
        await wait_until(lambda: leases[0].replica_id != fenced, 10, what="a new lease")
        await wait_until(
            lambda: leases[0].live == leases[1].live == {leases[0].replica_id, leases[1].replica_id},
            10,
            what=f"both agree on the live replicas: {leases[0].live} / {leases[1].live}",
        )
    finally:
        for replica in replicas:
            await replica.stop()
        broker.stop()


async def test_a_delivery_nobody_answers_marks_the_agent_offline(tmp_path: Path, agent: str) -> None:
    # Deliveries are answered only when they fail; nobody listening at all is the gateway gone.
    broker = NatsServer(tmp_path)
    broker.start()
    dispatcher = await apps.dispatcher(broker.url)
    gateway = await apps.edge_gateway(broker.url)
    nc = await nats.connect(broker.url)
    try:
        view = dispatcher.app[DISPATCHER].view
        async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)):
            await wait_until(lambda: view.link(agent) is not None, 5, what="the agent online")
            # The gateway vanishes from NATS as if SIGKILLed: its presence claim still says online.
            await gateway.nc.close()
            await submit_ok(nc, agent)
            await wait_until(lambda: view.link(agent) is None, 10, what="the agent marked offline")
        metrics = dispatcher.app[DISPATCHER].metrics
        assert metrics.deliveries("failed")._value.get() >= 1
    finally:
        await nc.close()
        await gateway.stop()
        await dispatcher.stop()
        broker.stop()
