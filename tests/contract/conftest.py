"""Fixtures for the black-box edge contract tests: one real stack per test session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS

from tests.contract.helpers import (
    IDLE_TIMEOUT_S,
    PREVIOUS_SECRET,
    SECRET,
    NatsProc,
    Proc,
    Service,
    Stack,
    dispatcher_env,
    gateway_env,
)


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("contract")
    broker = NatsProc(log_dir)
    broker.start()
    await broker.ready()
    dispatcher = Service("services.command_dispatcher", dispatcher_env(broker.url), log_dir)
    gateway = Service(
        "services.edge_gateway",
        gateway_env(broker.url, EDGE_SECRET_PREVIOUS=PREVIOUS_SECRET, ENVIRONMENT="development"),
        log_dir,
    )
    base_gateway = {"NATS_URL": broker.url, "SHUTDOWN_GRACE_S": "5"}
    prod_gateway = Service(
        "services.edge_gateway",
        # Defaults for EDGE_TOKEN_MAX_AGE_S and SYNC_RATE_PER_MIN; a short idle timeout.
        {
            **base_gateway,
            "ENVIRONMENT": "production",
            "EDGE_SECRET": SECRET,
            "IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        },
        log_dir,
    )
    procs: list[Proc] = [dispatcher, gateway, prod_gateway]
    st = Stack(log_dir, broker, dispatcher, gateway, prod_gateway)
    try:
        for p in procs:
            p.start()
        await asyncio.gather(dispatcher.ready(), gateway.ready(), prod_gateway.ready())
        yield st
    finally:
        for p in [*st.extra, *procs]:
            p.stop()
        broker.stop()


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[NATS]:
    client = await nats.connect(stack.nats.url, connect_timeout=5, max_reconnect_attempts=0)
    yield client
    await client.close()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def agent() -> str:
    return f"ct-{uuid.uuid4().hex[:12]}"
