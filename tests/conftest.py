"""Fixtures every suite shares: one JetStream `nats-server` of the session on a free port, a NATS
client and an HTTP session per test, and fresh ids so tests never see each other's traffic."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import nats
import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS

from tests.harness import fuzz  # noqa: F401  (registers the fuzz profiles)
from tests.harness.proc import NatsServer

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where service processes write their output (kept by pytest for a failed run)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("jetstream"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(broker: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(broker.url, connect_timeout=5, max_reconnect_attempts=0)
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def agent() -> str:
    return f"ct-{uuid.uuid4().hex[:12]}"
