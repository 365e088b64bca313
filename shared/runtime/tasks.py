"""Background work with one owner: failures are logged and seen, never dropped.

`TaskOwner` holds every long-lived task of a service. A permanent task (a timer loop, a presence
heartbeat, a consumer) that fails is logged with its traceback, counted, and restarted with
backoff; while it is down the service is not ready (`/readyz` 503), so Kubernetes stops routing to
a replica that no longer works. Short-lived tasks (a socket's life, a cleanup) are owned too: an
exception in one is logged, and all of them are cancelled and awaited when the owner closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

T = TypeVar("T")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0


class TaskOwner:
    def __init__(
        self,
        failures: Counter,
        down: Gauge,
        restart_min_s: float = RESTART_MIN_S,
        restart_max_s: float = RESTART_MAX_S,
    ) -> None:
        self._failures = failures
        self._down_gauge = down
        self.restart_min_s = restart_min_s
        self.restart_max_s = restart_max_s
        self.permanent: dict[str, asyncio.Task[None]] = {}  # name -> the task running it now
        self.down: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def healthy(self) -> bool:
        return not self.down

    def keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` for the life of the service, restarting it with backoff whenever it ends."""
        self.permanent[name] = self.spawn(self._supervise(name, run), name=name)

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        name: str,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[T]:
        """A task this owner cancels on close; an exception is logged (and handed to `on_failure`)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            err = t.exception()
            if err is not None:
                log.error("task %s failed", name, exc_info=err)
                if on_failure is not None:
                    on_failure(err)

        task.add_done_callback(done)
        return task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = self.restart_min_s
        while True:
            attempt = asyncio.create_task(_call(run), name=f"{name}-run")
            self.permanent[name] = attempt
            started = asyncio.get_running_loop().time()
            try:
                await asyncio.shield(attempt)
                log.error("permanent task %s returned; restarting", name)
            except asyncio.CancelledError:
                if self._closing or not attempt.done():
                    attempt.cancel()
                    raise
                log.error("permanent task %s was cancelled; restarting", name)
            except Exception:
                log.exception("permanent task %s failed; restarting", name)
            if asyncio.get_running_loop().time() - started > self.restart_max_s:
                delay = self.restart_min_s  # it had been running well: a new failure starts over
            self._failures.labels(task=name).inc()
            self.down.add(name)
            self._down_gauge.set(len(self.down))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.restart_max_s)
            self.down.discard(name)
            self._down_gauge.set(len(self.down))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every task and wait for them (bounded)."""
        self._closing = True
        await cancel_and_wait([*self._tasks, *self.permanent.values()], timeout_s)


async def _call(run: Callable[[], Awaitable[None]]) -> None:
    await run()


class KeyedWorkers:
    """At most `limit` jobs at once; jobs of one key (an agent) run one after another, in order.

    So one agent's slow gateway never holds up another agent's work, and an agent's own work
    keeps its order. `submit` waits for a free slot: the producer is back-pressured, not buffered.
    """

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        await self._slots.acquire()
        previous = self._tails.get(key)
        task = asyncio.create_task(self._run(key, previous, job))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, key: str, previous: asyncio.Task[None] | None, job: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await job()
        except Exception:
            log.exception("job failed", extra={"key": key})
        finally:
            self._slots.release()
            if self._tails.get(key) is asyncio.current_task():
                del self._tails[key]

    async def join(self) -> None:
        """Wait for every submitted job."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout_s: float = 5.0) -> None:
    """Cancel `tasks` and wait for them, cancelling again while any lingers.

    On Python 3.11 a cancellation that races a completing `wait_for` inside a library can be
    swallowed; asking again (every 0.5 s, within the bound) makes the stop certain.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.error("tasks would not stop: %s", [t.get_name() for t in pending])
