"""Every permanent background task of every service has one owner: a task that dies turns
`/readyz` 503, is counted in `ikiro_task_failures_total{task}`, and is restarted (STYLE: "a permanent
task's death must reach readiness"). The task names are read from the running service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shared.runtime.service import SERVICE
from tests.harness.proc import NatsServer, http_status, wait_until
from tests.integration import apps

SERVICES: dict[str, Callable[..., Awaitable[apps.RunningApp]]] = {
    "command_dispatcher": apps.dispatcher,
    "edge_gateway": apps.edge_gateway,
    "miniapp_gateway": apps.miniapp_gateway,
}
HAS_PERMANENT_TASKS = {"command_dispatcher", "miniapp_gateway"}
RESTART_MIN_S = 1.0  # long enough for a poll to see the service not ready


def slow_restarts(app: web.Application) -> None:
    app[SERVICE].tasks.restart_min_s = RESTART_MIN_S


async def failures(http: aiohttp.ClientSession, service: apps.RunningApp, task: str) -> float:
    async with http.get(f"{service.http}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ikiro_task_failures_total" and sample.labels == {"task": task}:
                return sample.value
    return 0.0


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_a_dead_permanent_task_turns_readyz_503_is_counted_and_restarted(
    broker: NatsServer, http: aiohttp.ClientSession, name: str
) -> None:
    service = await SERVICES[name](broker.url, prepare=slow_restarts)
    try:
        owner = service.app[SERVICE].tasks
        tasks = sorted(owner.permanent)
        assert bool(tasks) == (name in HAS_PERMANENT_TASKS), tasks
        readyz = f"{service.http}/readyz"
        assert await http_status(readyz) == 200
        for task in tasks:
            before = await failures(http, service, task)
            owner.permanent[task].cancel()

            async def readyz_is(status: int) -> bool:
                return await http_status(readyz) == status

            await wait_until(lambda: readyz_is(503), RESTART_MIN_S, interval=0.02, what=f"{task} down: 503")
            assert await failures(http, service, task) == before + 1
            await wait_until(lambda: readyz_is(200), RESTART_MIN_S * 3, what=f"{task} restarted: 200")
            assert not owner.permanent[task].done()
    finally:
        await service.stop()
