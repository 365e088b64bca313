"""No secret and no token ever reaches a log, at the most verbose level, in production's format:
the services run as processes with LOG_LEVEL=DEBUG and LOG_FORMAT=json while tokens good and bad,
the legacy raw secret, `/edge/sync` and in-band refreshes go through them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS

from tests.harness import edge, miniapp
from tests.harness.proc import NatsServer, Service

VERBOSE = {"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"}


def assert_absent(services: list[Service], *secrets: str) -> None:
    for svc in services:
        output = svc.output()
        assert output, f"{svc.name} logged nothing at DEBUG: the test would prove nothing"
        for secret in secrets:
            assert secret not in output, f"{svc.name} logged a secret or token ({secret[:6]}...)"


async def start(module: str, env: dict[str, str], logs: Path) -> Service:
    svc = Service(module, {**env, **VERBOSE}, logs)
    svc.start()
    return await svc.ready()


async def test_edge_secrets_and_tokens_stay_out_of_the_logs(
    broker: NatsServer, logs: Path, nc: NATS, http: aiohttp.ClientSession, agent: str
) -> None:
    services = [
        await start("services.command_dispatcher", edge.dispatcher_env(broker.url), logs),
        await start(
            "services.edge_gateway",
            edge.gateway_env(broker.url, EDGE_SECRET_PREVIOUS=edge.PREVIOUS_SECRET),
            logs,
        ),
    ]
    dispatcher, gateway = services
    try:
        token = edge.make_token(agent)
        forged = edge.make_token(agent, secret=edge.OTHER_SECRET)
        command_id = await edge.submit_ok(nc, agent)
        async with edge.edge_socket(gateway.ws, agent, token=token) as ws:
            await ws.expect("command")
            await edge.ack(ws, command_id, "completed")
            await ws.send_raw("not json")
            await ws.expect("error")
        async with edge.edge_socket(gateway.ws, agent, token=edge.SECRET) as ws:  # legacy: the raw secret
            await ws.ping_pong()
        status, _ = await edge.raw_upgrade(http, gateway.http, agent, edge.edge_headers(agent, forged))
        assert status == 401
        assert (await edge.sync(http, gateway.http, agent, token=token))[0] == 200
        assert (await edge.sync(http, gateway.http, agent, token=forged))[0] == 401
        # A header line over aiohttp's 8,190-byte limit, the token at its start.
        oversized = edge.make_token(agent + "-oversized")
        assert await raw_status(gateway.port, f"Authorization: Bearer {oversized}{'A' * 9000}") == 400
        await edge.wait_state(nc, command_id, "completed")
    finally:
        for svc in services:
            svc.stop()
    assert_absent([dispatcher, gateway], edge.SECRET, edge.PREVIOUS_SECRET, token, forged, oversized[:40])


async def test_miniapp_secrets_and_tokens_stay_out_of_the_logs(
    broker: NatsServer, logs: Path, http: aiohttp.ClientSession
) -> None:
    replica = await start("services.miniapp_gateway", miniapp.replica_env(broker.url), logs)
    try:
        user, session = miniapp.new_user(), miniapp.new_session()
        token, fresh = miniapp.make_token(user), miniapp.make_token(user, exp_in=7200)
        forged = miniapp.make_token(user, secret="not-the-secret-" + "x" * 32)
        browser = await miniapp.open_socket(http, replica, session, token)
        await browser.expect("connected")
        await browser.send("auth", {"token": fresh})
        await browser.expect("auth_ok")
        await browser.send("auth", {"token": forged})
        assert (await browser.expect("error"))["code"] == "invalid_token"
        await browser.close()
        refused = await miniapp.open_socket(http, replica, session, forged)
        assert (await refused.expect_close())[0] == 4001
        # A token offered as a subprotocol (as some browser clients do): aiohttp warned with it.
        offered = miniapp.make_token(user, exp_in=60)
        url = miniapp.socket_url(replica, session, token)
        async with http.ws_connect(url, protocols=[offered]) as ws:
            assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT  # connected
        # A request line over 8,190 bytes: aiohttp logged its first 100 bytes at ERROR.
        in_url = miniapp.make_token(user, exp_in=120)
        line = f"GET /ws/miniapp/{session}?token={in_url}&pad={'x' * 9000} HTTP/1.1"
        assert await raw_status(replica.port, "Host: x", request_line=line) == 400
    finally:
        replica.stop()
    assert_absent([replica], miniapp.SECRET, token, fresh, forged, offered, in_url[:40])


async def raw_status(port: int, header: str, request_line: str = "GET /healthz HTTP/1.1") -> int:
    """The status of a request written by hand (what no HTTP client library would send)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{request_line}\r\n{header}\r\n\r\n".encode())
        async with asyncio.timeout(5):
            return int((await reader.readline()).split()[1])
    finally:
        writer.close()
