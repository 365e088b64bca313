"""Command timers: one in-memory schedule of every unfinished command's next deadline.

Each replica schedules the commands of the partitions it owns (`view.py`, `ownership.py`); when a
partition moves, its new owner reads them and schedules them afresh. A firing decides from the
record as this replica sees it (`timer_action`) and writes with a compare-and-set, so a timer that
fires on two replicas at once (an old owner that has not yet let go) changes the record once. While
this replica's own lease is in doubt, due timers wait `OWNER_RECHECK_S`.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time

from shared.broker.connection import NATS_ERRORS
from shared.protocol import subjects
from shared.protocol.commands import CommandState
from shared.runtime.tasks import KeyedWorkers

from .delivery import Delivery
from .lifecycle import TimerAction, Timing, timer_action
from .ownership import Ownership
from .records import Record
from .store import CommandStore
from .view import View

log = logging.getLogger(__name__)

OWNER_RECHECK_S = 1.0
RETRY_S = 1.0
CONCURRENCY = 512
_FINAL = {
    TimerAction.EXPIRE: (CommandState.EXPIRED, "expired"),
    TimerAction.UNDELIVERED: (CommandState.FAILED, "undelivered"),
    TimerAction.EXECUTION_TIMEOUT: (CommandState.FAILED, "execution_timeout"),
}


class Timers:
    def __init__(
        self, view: View, store: CommandStore, delivery: Delivery, ownership: Ownership, timing: Timing
    ) -> None:
        self.view = view
        self.store = store
        self.delivery = delivery
        self.ownership = ownership
        self.timing = timing
        self.workers = KeyedWorkers(CONCURRENCY)
        # (when, tie-breaker, command_id, revision); entries for an older revision are skipped.
        self._heap: list[tuple[float, int, str, int]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()

    def schedule(self, record: Record, revision: int) -> None:
        """Note when `record` (at `revision`) next needs a look."""
        now = time.time()
        action, at = timer_action(record, now, self.timing, self.view.link(record.edge_agent_id))
        if action is TimerAction.DONE or (action is TimerAction.WAIT and at is None):
            return
        when = at if action is TimerAction.WAIT and at is not None else now
        if not self._heap or when < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (when, next(self._order), record.command_id, revision))
        if len(self._heap) > 4 * len(self.view.records) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Drop the entries of superseded revisions (kept lazily until now) by scheduling afresh."""
        self._heap.clear()
        for record, revision in list(self.view.records.values()):
            self.schedule(record, revision)

    def reschedule_agent(self, edge_agent_id: str) -> None:
        """The agent's socket changed: its commands' deadlines may have too."""
        for record in self.view.unfinished(edge_agent_id):
            found = self.view.get(record.command_id)
            if found is not None:
                self.schedule(*found)

    async def run(self) -> None:
        try:
            while True:
                await self._fire_due()
        finally:
            await self.workers.close()

    async def _fire_due(self) -> None:
        self._wake.clear()
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            _, _, command_id, revision = heapq.heappop(self._heap)
            found = self.view.get(command_id)
            if found is None or found.revision != revision:
                continue  # finished, or superseded by a newer revision with its own entry
            record = found.record
            if not self.ownership.active(subjects.partition_of(record.edge_agent_id)):
                heapq.heappush(self._heap, (now + OWNER_RECHECK_S, next(self._order), command_id, revision))
                continue
            await self.workers.submit(
                record.edge_agent_id, functools.partial(self._fire, command_id, revision)
            )
        delay = self._heap[0][0] - time.time() if self._heap else None
        if delay is None or delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _fire(self, command_id: str, revision: int) -> None:
        found = self.view.get(command_id)
        if found is None or found.revision != revision:
            return
        record = found.record
        action, _ = timer_action(record, time.time(), self.timing, self.view.link(record.edge_agent_id))
        try:
            if action is TimerAction.DELIVER:
                await self.delivery.catch_up(record.edge_agent_id)
            elif action is TimerAction.REDELIVER:
                await self.delivery.send(command_id)
            elif action in _FINAL:
                await self.store.transition(command_id, functools.partial(self._finish, action))
            elif action is TimerAction.WAIT:
                self.schedule(record, revision)  # the clock ran a little behind the deadline
        except NATS_ERRORS as err:
            # The write did not happen (or its outcome is unknown): nothing else would look at this
            # command again until it changes, so look again shortly.
            log.warning("timer of %s not applied, retrying: %s", command_id, err)
            heapq.heappush(self._heap, (time.time() + RETRY_S, next(self._order), command_id, revision))
            self._wake.set()

    def _finish(self, action: TimerAction, current: Record) -> Record | None:
        now = time.time()
        if timer_action(current, now, self.timing, self.view.link(current.edge_agent_id))[0] is not action:
            return None
        state, error = _FINAL[action]
        return current.moved(state, now, error=error)
