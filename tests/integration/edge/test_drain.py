"""A draining gateway keeps what agents sent it: acks that cross its 1012 on the wire are applied.
(Beyond DESIGN, which says only that a drain closes sockets with 1012.)"""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS

from services.edge_gateway.gateway import GATEWAY
from tests.harness.edge import (
    dispatcher_env,
    edge_headers,
    edge_socket,
    gateway_env,
    make_token,
    submit_ok,
    wait_state,
)
from tests.harness.proc import NatsServer, Service, wait_until
from tests.integration import apps


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


async def test_a_peer_that_never_answers_the_close_is_cut_after_the_handshake_time(
    broker: NatsServer, agent: str
) -> None:
    # Not after the idle timeout: the reader waiting for a frame is told the socket is closing.
    gateway = await apps.edge_gateway(broker.url, send_timeout_s=1.0, idle_timeout_s=60.0)
    connections = gateway.app[GATEWAY].connections
    token = make_token(agent, secret=apps.EDGE_SECRET)
    url = f"{gateway.ws}/edge/ws?edge_agent_id={agent}"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, headers=edge_headers(agent, token), autoclose=False) as old,
            edge_socket(gateway.ws, agent, token=token),  # replaces it: 4000
        ):
            closing = await old.receive(timeout=10)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4000)
            # This peer never answers: after the close handshake's time (2 s + the send timeout)
            # the gateway cuts the connection and forgets it.
            await wait_until(lambda: len(connections) == 1, 8, what="the old connection cut")
    finally:
        await gateway.stop()
