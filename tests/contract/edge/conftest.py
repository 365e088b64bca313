"""The edge stack of the contract tests, as processes on a broker of its own (its dispatcher's
timers must not be shared with the in-process dispatchers of the integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from tests.harness.edge import IDLE_TIMEOUT_S, PREVIOUS_SECRET, SECRET, EdgeStack, dispatcher_env, gateway_env
from tests.harness.proc import NatsServer, Service


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> AsyncIterator[EdgeStack]:
    broker = NatsServer(tmp_path_factory.mktemp("edge-jetstream"))
    broker.start()
    st = EdgeStack(
        logs,
        broker,
        Service("services.command_dispatcher", dispatcher_env(broker.url), logs),
        Service(
            "services.edge_gateway",
            gateway_env(broker.url, EDGE_SECRET_PREVIOUS=PREVIOUS_SECRET, ENVIRONMENT="development"),
            logs,
        ),
        # The defaults of EDGE_TOKEN_MAX_AGE_S and SYNC_RATE_PER_MIN; a short idle timeout.
        Service(
            "services.edge_gateway",
            {
                "NATS_URL": broker.url,
                "ENVIRONMENT": "production",
                "EDGE_SECRET": SECRET,
                "IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
                "SHUTDOWN_GRACE_S": "5",
            },
            logs,
        ),
    )
    try:
        for svc in (st.dispatcher, st.gateway, st.prod_gateway):
            svc.start()
        await asyncio.gather(st.dispatcher.ready(), st.gateway.ready(), st.prod_gateway.ready())
        yield st
    finally:
        for proc in [*st.extra, st.dispatcher, st.gateway, st.prod_gateway]:
            proc.stop()
        broker.stop()


@pytest.fixture
async def nc(stack: EdgeStack) -> AsyncIterator[NATS]:
    client = await nats.connect(stack.broker.url, connect_timeout=5, max_reconnect_attempts=0)
    yield client
    await client.close()
