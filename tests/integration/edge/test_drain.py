"""A draining gateway keeps what agents sent it: acks that cross its 1012 on the wire are applied.
(Beyond DESIGN, which says only that a drain closes sockets with 1012.)"""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS

from tests.harness.edge import dispatcher_env, edge_headers, gateway_env, submit_ok, wait_state
from tests.harness.proc import NatsServer, Service


async def test_an_ack_sent_after_the_gateways_close_frame_is_still_applied(
    broker: NatsServer, logs: Path, nc: NATS, agent: str
) -> None:
    dispatcher = Service("services.command_dispatcher", dispatcher_env(broker.url), logs)
    gateway = Service("services.edge_gateway", gateway_env(broker.url), logs)
    try:
        for svc in (dispatcher, gateway):
            svc.start()
            await svc.ready()
        async with (
            aiohttp.ClientSession() as http,
            # autoclose off: this agent reads the gateway's close frame, acks, and only then closes.
            http.ws_connect(
                f"{gateway.ws}/edge/ws?edge_agent_id={agent}", headers=edge_headers(agent), autoclose=False
            ) as ws,
        ):
            command_id = await submit_ok(nc, agent)
            command = await ws.receive_json(timeout=5)
            assert command["data"]["command_id"] == command_id
            gateway.signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1012)
            for status in ("received", "executing", "completed"):
                ack = {"command_id": command_id, "status": status, "error": None}
                await ws.send_json({"type": "command_ack", "data": ack})
            await ws.close()
        await wait_state(nc, command_id, "completed", timeout=10)
        assert await gateway.wait_exit(15) == 0
    finally:
        gateway.stop()
        dispatcher.stop()
