"""A bounded pool that runs jobs concurrently across keys and in order within a key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


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
