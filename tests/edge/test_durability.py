"""Nothing acknowledged to a submitter is lost when a process dies (DESIGN sections 1, 2, 4).

Services run as real processes here, so they can be SIGKILLed and SIGTERMed.
"""

from __future__ import annotations

import asyncio
import collections
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from shared.client import CommandClient
from shared.protocol.errors import IkiroError
from tests.edge.support import SECRET, connect_agent
from tests.support import NatsServer, ServiceProcess, free_port, http_status, wait_until

MSG = {"thread_id": "t1", "text": "hello"}
DISPATCHER = "services.command_dispatcher"
GATEWAY = "services.edge_gateway"


def env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "EDGE_SECRET": SECRET,
        "ACK_TIMEOUT_S": "1",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


class Processes:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.running: list[ServiceProcess] = []

    async def start(self, module: str, **extra: str) -> ServiceProcess:
        proc = ServiceProcess(module, free_port(), env(self.nats_url, **extra))
        self.running.append(proc)
        await proc.start()
        return proc

    def ws_url(self, gateway: ServiceProcess) -> str:
        return f"ws://127.0.0.1:{gateway.port}/edge/ws"


@pytest.fixture
async def procs(nats_url: str) -> AsyncIterator[Processes]:
    p = Processes(nats_url)
    yield p
    for proc in p.running:
        proc.kill()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[CommandClient]:
    nc = await nats.connect(nats_url)
    yield CommandClient(nc)
    await nc.close()


async def test_offline_command_survives_sigkill_of_the_dispatcher(
    procs: Processes, client: CommandClient, agent_id: str
) -> None:
    dispatcher = await procs.start(DISPATCHER)
    gateway = await procs.start(GATEWAY)
    sub = await client.submit(agent_id, "send_message_now", MSG)
    dispatcher.kill()
    await procs.start(DISPATCHER)
    agent = await connect_agent(procs.ws_url(gateway), agent_id)
    try:
        assert (await agent.command())["command_id"] == str(sub.command_id)
    finally:
        await agent.close()


async def test_offline_command_survives_a_nats_server_restart(tmp_path: Path, agent_id: str) -> None:
    server = NatsServer(tmp_path / "js")
    server.start()
    procs = Processes(server.url)
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await procs.start(DISPATCHER)
        gateway = await procs.start(GATEWAY)
        sub = await CommandClient(nc).submit(agent_id, "send_message_now", MSG)
        server.stop()
        server.start()
        await wait_until(lambda: nc.is_connected, timeout=15)
        for proc in procs.running:
            await wait_until(proc.ready, timeout=15)
        agent = await connect_agent(procs.ws_url(gateway), agent_id)
        try:
            assert (await agent.command(timeout=15))["command_id"] == str(sub.command_id)
        finally:
            await agent.close()
    finally:
        await nc.close()
        for proc in procs.running:
            proc.kill()
        server.stop()


async def test_command_survives_sigkill_of_the_gateway_holding_the_agent(
    procs: Processes, client: CommandClient, agent_id: str
) -> None:
    await procs.start(DISPATCHER)
    doomed = await procs.start(GATEWAY)
    survivor = await procs.start(GATEWAY)
    first = await connect_agent(procs.ws_url(doomed), agent_id)
    await wait_until(lambda: _online(client, agent_id), timeout=10)
    doomed.kill()
    await first.close_code()
    await first.close()
    sub = await client.submit(agent_id, "send_message_now", MSG)
    second = await connect_agent(procs.ws_url(survivor), agent_id)
    try:
        assert (await second.command())["command_id"] == str(sub.command_id)
    finally:
        await second.close()


async def _online(client: CommandClient, agent_id: str) -> bool:
    try:
        return (await client.agent(agent_id)).online
    except IkiroError:  # not known yet, or no dispatcher answering yet
        return False


async def test_two_dispatchers_deliver_each_command_once(
    procs: Processes, client: CommandClient, agent_id: str
) -> None:
    await procs.start(DISPATCHER)
    await procs.start(DISPATCHER)
    gateway = await procs.start(GATEWAY)
    agent = await connect_agent(procs.ws_url(gateway), agent_id)
    try:
        ids = [
            str((await client.submit(agent_id, "emit_event", {"event_type": "e"})).command_id)
            for _ in range(30)
        ]
        seen: collections.Counter[str] = collections.Counter()
        while set(seen) != set(ids):
            cid = (await agent.command())["command_id"]
            seen[cid] += 1
            await agent.ack(cid, "completed")
        for cid in ids:
            await wait_until(lambda c=cid: _completed(client, c), timeout=10)
        assert all(seen[cid] == 1 for cid in ids), seen
        assert [(await client.get(cid)).attempts for cid in ids] == [1] * len(ids)
    finally:
        await agent.close()


async def _completed(client: CommandClient, command_id: str) -> bool:
    return (await client.get(command_id)).state == "completed"


async def test_sigterm_turns_readyz_503_then_closes_sockets_with_1012(
    procs: Processes, client: CommandClient, agent_id: str
) -> None:
    await procs.start(DISPATCHER)
    gateway = await procs.start(GATEWAY, SHUTDOWN_DELAY_S="3")
    agent = await connect_agent(procs.ws_url(gateway), agent_id)
    late = None
    try:
        gateway.signal(signal.SIGTERM)
        await wait_until(lambda: _status_is(f"{gateway.base_url}/readyz", 503), timeout=5)
        assert await http_status(f"{gateway.base_url}/healthz") == 200
        # Until SHUTDOWN_DELAY_S has passed the load balancer may still send sockets here.
        late = await connect_agent(procs.ws_url(gateway), f"{agent_id}-late")
        assert not agent.closed.is_set()
        assert await agent.close_code() == 1012
        assert await late.close_code() == 1012
        assert await asyncio.to_thread(gateway.wait, 30) == 0
    finally:
        await agent.close()
        if late is not None:
            await late.close()


async def _status_is(url: str, status: int) -> bool:
    return await http_status(url) == status


async def test_replacement_across_two_gateway_processes(
    procs: Processes, client: CommandClient, agent_id: str
) -> None:
    await procs.start(DISPATCHER)
    one = await procs.start(GATEWAY)
    two = await procs.start(GATEWAY)
    first = await connect_agent(procs.ws_url(one), agent_id)
    await wait_until(lambda: _online(client, agent_id), timeout=10)
    second = await connect_agent(procs.ws_url(two), agent_id)
    try:
        assert await first.close_code() == 4000
        sub = await client.submit(agent_id, "send_message_now", MSG)
        assert (await second.command())["command_id"] == str(sub.command_id)
    finally:
        await first.close()
        await second.close()


async def test_dispatcher_exits_cleanly_on_sigterm(procs: Processes) -> None:
    dispatcher = await procs.start(DISPATCHER)
    dispatcher.signal(signal.SIGTERM)
    assert await asyncio.to_thread(dispatcher.wait, 30) == 0


def test_missing_production_secret_exits_with_one_clear_line() -> None:
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    result = subprocess.run(
        [sys.executable, "-m", GATEWAY],
        cwd=ROOT,
        env={**os.environ, "ENVIRONMENT": "production", "EDGE_SECRET": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "EDGE_SECRET" in lines[0]
