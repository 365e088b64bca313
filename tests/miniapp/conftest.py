"""Fixtures of the MiniApp tests: two gateway replicas on different ports over one real NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.miniapp.support import Gateway, start_gateway


@pytest.fixture(scope="session")
async def pair(nats_url: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two replicas shared by the tests that need default limits (each test uses fresh sessions)."""
    a = await start_gateway(nats_url)
    b = await start_gateway(nats_url)
    yield a, b
    await b.stop()
    await a.stop()


@pytest.fixture
async def gateway_factory(nats_url: str) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start gateways with their own settings; all are stopped after the test."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        gateway = await start_gateway(nats_url, **overrides)
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        await gateway.stop()
