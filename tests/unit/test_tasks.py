"""`TaskOwner`: a permanent task that fails is logged, counted, marked down and restarted with
backoff; a short-lived task's failure is logged; close() stops everything."""

from __future__ import annotations

import asyncio
import functools
import itertools

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.runtime.tasks import KeyedWorkers, TaskOwner
from tests.harness.proc import wait_until


def owner(registry: CollectorRegistry, restart_min_s: float = 0.1, restart_max_s: float = 0.2) -> TaskOwner:
    failures = Counter("failures_total", "Failures.", ["task"], registry=registry)
    return TaskOwner(failures, Gauge("down", "Down.", registry=registry), restart_min_s, restart_max_s)


async def test_a_failing_permanent_task_is_logged_counted_down_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    tasks = owner(registry)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(loop.time())
        if len(starts) <= 4:
            raise RuntimeError(f"boom {len(starts)}")
        await asyncio.Event().wait()  # then it runs for good

    tasks.keep("flaky", flaky)
    await wait_until(lambda: "flaky" in tasks.down, 1, interval=0.01)
    assert not tasks.healthy and registry.get_sample_value("down") == 1
    await wait_until(lambda: len(starts) == 5 and tasks.healthy, 3, interval=0.01)
    assert registry.get_sample_value("down") == 0
    assert registry.get_sample_value("failures_total", {"task": "flaky"}) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.1 s, doubling, capped at 0.2 s (uncapped the fourth would be 0.8 s).
    assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.18 and 0.18 <= gaps[3] < 0.6, gaps
    assert "permanent task flaky failed" in caplog.text and "boom 1" in caplog.text
    await tasks.close()
    assert tasks.permanent["flaky"].cancelled()


async def test_a_failing_spawned_task_is_logged_and_close_cancels_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = owner(CollectorRegistry())
    failed: list[BaseException] = []

    async def boom() -> None:
        raise ValueError("once")

    tasks.spawn(boom(), "oneshot", on_failure=failed.append)
    forever = tasks.spawn(asyncio.Event().wait(), "forever")
    await wait_until(lambda: failed, 1, interval=0.01)
    assert isinstance(failed[0], ValueError) and "task oneshot failed" in caplog.text
    await tasks.close()
    assert forever.cancelled() and tasks.healthy


async def test_keyed_workers_run_one_key_in_order_and_log_a_failing_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers, done = KeyedWorkers(limit=4), []

    async def job(key: str, n: int) -> None:
        await asyncio.sleep(0.01 * (3 - n))  # the work: later jobs are quicker, only the key order holds them
        if (key, n) == ("a", 1):
            raise RuntimeError("job a1")
        done.append(f"{key}{n}")

    for n in range(3):
        for key in "ab":
            await workers.submit(key, functools.partial(job, key, n))
    await workers.join()
    assert [d for d in done if d[0] == "a"] == ["a0", "a2"] and [d for d in done if d[0] == "b"] == [
        "b0",
        "b1",
        "b2",
    ]
    assert "job failed" in caplog.text and "job a1" in caplog.text
