"""The dispatcher's timers, where only its internals show the state a test needs."""

from __future__ import annotations

from pathlib import Path

import nats

from shared.protocol import subjects
from tests.harness.edge import edge_socket, make_token, submit_ok
from tests.harness.proc import NatsServer, wait_until
from tests.integration import apps


async def test_command_pulled_on_connect_is_sent_again_after_the_ack_timeout(
    tmp_path: Path, agent: str
) -> None:
    # Submitted while offline, its timer sleeps for the offline recheck (a minute); the pull on
    # connect must wake it, or the redelivery would wait that long. A broker of its own, so the
    # timer consumer's counts are this command's alone.
    broker = NatsServer(tmp_path)
    broker.start()
    dispatcher = await apps.dispatcher(broker.url, offline_recheck_s=60.0)
    gateway = await apps.edge_gateway(broker.url)
    nc = await nats.connect(broker.url)
    try:
        cid = await submit_ok(nc, agent)
        js = nc.jetstream()

        async def timer_asleep() -> bool:
            info = await js.consumer_info(subjects.TIMERS_STREAM, subjects.TIMERS_CONSUMER)
            return bool(info.num_pending == 0 and info.num_ack_pending == 1 and info.num_redelivered == 0)

        await wait_until(timer_asleep, 10, what="the command's timer parked for the offline recheck")
        async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)) as ws:
            assert (await ws.expect("command"))["command_id"] == cid
            assert (await ws.expect("command", timeout=5))["command_id"] == cid  # not acked: sent again
    finally:
        await nc.close()
        await gateway.stop()
        await dispatcher.stop()
        broker.stop()
