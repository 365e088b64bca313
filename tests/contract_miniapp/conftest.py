"""Fixtures of the MiniApp contract tests: our own JetStream `nats-server` on a free port and two
gateway replicas as real processes; each test uses fresh session and user ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS

from devtools.natsserver import NatsServer
from tests.contract_miniapp.support import Replica

StartReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("contract-jetstream"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-replica-logs")


@pytest.fixture(scope="session")
async def replicas(broker: NatsServer, logs: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas with default settings (only the session cap lowered), shared by the tests."""
    pair = (Replica(broker.url, logs / "a.log"), Replica(broker.url, logs / "b.log"))
    try:
        for replica in pair:
            replica.start()
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(replica.wait_ready(http) for replica in pair))
        yield pair
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture
async def start_replica(broker: NatsServer, logs: Path) -> AsyncIterator[StartReplica]:
    """A further replica for one test (to be killed or stopped); SIGKILLed afterwards if alive."""
    started: list[Replica] = []

    async def start(**env: str) -> Replica:
        replica = Replica(broker.url, logs / f"extra-{len(started)}.log", env_extra=env)
        started.append(replica)
        replica.start()
        async with aiohttp.ClientSession() as http:
            await replica.wait_ready(http)
        return replica

    yield start
    for replica in started:
        replica.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bus(broker: NatsServer) -> AsyncIterator[NATS]:
    """A backend service's NATS connection."""
    client = await nats.connect(broker.url)
    yield client
    await client.close()
