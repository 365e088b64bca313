"""The HTTP guards every port has (DESIGN section 2, `shared/runtime/http.py`), seen from outside
over raw sockets: a connection that does not send whole headers within 10 s is closed and counted,
however it drips; a malformed request gets a terse 400 that echoes nothing and logs no token; no
response names the server's software."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import edge, miniapp
from tests.harness.proc import NatsServer, Service, http_status

HEADER_TIMEOUT_S = 10.0
HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture(scope="module")
async def services(broker: NatsServer, logs: Path) -> AsyncIterator[list[Service]]:
    started = [
        Service("services.command_dispatcher", edge.dispatcher_env(broker.url), logs),
        Service("services.edge_gateway", edge.gateway_env(broker.url, LOG_LEVEL="DEBUG"), logs),
        Service("services.miniapp_gateway", miniapp.replica_env(broker.url, LOG_LEVEL="DEBUG"), logs),
    ]
    for svc in started:
        svc.start()
    try:
        yield [await svc.ready() for svc in started]
    finally:
        for svc in started:
            svc.stop()


async def refused(http: aiohttp.ClientSession, svc: Service, reason: str) -> float:
    async with http.get(f"{svc.http}/metrics") as r:
        text = await r.text()
    found = re.search(rf'ikiro_http_connections_refused_total{{reason="{reason}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def seconds_until_closed(port: int, first: bytes, drip: bytes = b"", every_s: float = 0) -> float:
    """Send `first`, then `drip` every `every_s` (never completing the headers), and time the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(first)

    async def dripping() -> None:
        while drip:
            await asyncio.sleep(every_s)
            writer.write(drip)
            await writer.drain()

    dripper = asyncio.create_task(dripping())
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S + 5):
            while await reader.read(4096):
                pass  # a close after a response would also end here; a 408 is allowed, none is sent
        return time.monotonic() - started
    finally:
        dripper.cancel()
        writer.close()


async def test_a_connection_without_whole_headers_is_closed_after_10_s_on_every_port(
    services: list[Service], http: aiohttp.ClientSession, agent: str
) -> None:
    _, gateway, replica = services
    before = [await refused(http, svc, "header_timeout") for svc in services]
    shapes = [
        (b"", b"", 0.0),  # connects, sends nothing
        (HALF_REQUEST, b"", 0.0),  # half a request, then nothing
        (HALF_REQUEST, b"X", 2.0),  # a byte every 2 s: never a whole header
    ]
    # Sockets whose headers were whole live on past the deadline: it is on headers, not connections.
    browser = await miniapp.open_socket(http, replica, miniapp.new_session(), miniapp.make_token("u-1"))
    await browser.expect("connected")
    async with edge.edge_socket(gateway.ws, agent) as agent_socket:
        closes = [seconds_until_closed(svc.port, *shape) for svc in services for shape in shapes]
        elapsed = await asyncio.gather(*closes)
        await agent_socket.ping_pong()
        await browser.ping_pong()
    await browser.close()
    assert all(HEADER_TIMEOUT_S - 1 <= e <= HEADER_TIMEOUT_S + 3 for e in elapsed), elapsed
    after = [await refused(http, svc, "header_timeout") for svc in services]
    assert [a - b for a, b in zip(after, before, strict=True)] == [len(shapes)] * len(services)
    for svc in services:
        assert await http_status(f"{svc.http}/healthz") == 200


async def test_a_request_line_over_the_limit_gets_a_terse_400_that_echoes_nothing(
    services: list[Service], http: aiohttp.ClientSession
) -> None:
    token = miniapp.make_token(miniapp.new_user())
    for svc in services:
        before = await refused(http, svc, "malformed")
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        path = f"/ws/miniapp/s?token={token}&pad={'x' * 9000}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer[:200]
        assert token[:20].encode() not in answer and b"ws/miniapp" not in answer
        assert b"invalid_request" in answer
        assert await refused(http, svc, "malformed") == before + 1
        assert token[:20] not in svc.output(), f"{svc.name} logged the request line"


async def test_no_response_names_the_server_software(
    services: list[Service], http: aiohttp.ClientSession
) -> None:
    dispatcher, gateway, replica = services
    answers = []
    for svc in services:
        for path in ("/healthz", "/readyz", "/metrics", "/no-such-path"):
            async with http.get(f"{svc.http}{path}") as r:
                answers.append((path, r.headers))
    async with http.post(f"{gateway.http}/edge/sync", data=b"{}") as r:
        answers.append(("/edge/sync", r.headers))
    async with http.ws_connect(f"{replica.ws}/ws/miniapp/s?token=bad") as ws:
        await ws.receive()
        answers.append(("upgrade", ws._response.headers))
    reader, writer = await asyncio.open_connection("127.0.0.1", dispatcher.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert raw.split(b"\r\n")[0].endswith(b" 400 Bad Request"), raw[:200]
    assert b"server:" not in raw.lower()
    for path, headers in answers:
        assert "Server" not in headers, (path, headers.get("Server"))
