"""The MiniApp contract tests' gateways: two replicas as real processes on the session's broker,
and further ones per test; each test uses fresh session and user ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.harness.miniapp import Replicas, replica_env
from tests.harness.proc import NatsServer, Service

StartReplica = Callable[..., Awaitable[Service]]


@pytest.fixture(scope="session")
async def replicas(broker: NatsServer, logs: Path) -> AsyncIterator[tuple[Service, Service]]:
    """Two replicas with default settings (only the session cap lowered), shared by the tests."""
    pair = tuple(Service("services.miniapp_gateway", replica_env(broker.url), logs) for _ in range(2))
    try:
        for replica in pair:
            replica.start()
        await asyncio.gather(*(replica.ready() for replica in pair))
        yield pair[0], pair[1]
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture
async def start_replica(broker: NatsServer, logs: Path) -> AsyncIterator[StartReplica]:
    """A further replica for one test (`NAME=None` leaves a setting unset); stopped afterwards."""
    further = Replicas(broker.url, logs)
    yield further.start
    further.stop()
