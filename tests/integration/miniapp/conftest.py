"""In-process MiniApp gateways with their own settings, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.harness.proc import NatsServer
from tests.integration import apps

Start = Callable[..., Awaitable[apps.RunningApp]]


@pytest.fixture
async def start(broker: NatsServer) -> AsyncIterator[Start]:
    started: list[apps.RunningApp] = []

    async def start(**overrides: int) -> apps.RunningApp:
        started.append(await apps.miniapp_gateway(broker.url, **overrides))
        return started[-1]

    yield start
    for gateway in started:
        await gateway.stop()
