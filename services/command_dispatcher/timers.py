"""Command timers: one JetStream work message per unfinished command, redelivered when due.

Which replica runs a timer does not matter: each firing re-reads the record and decides from it
alone (`timer_action`), and every change is a compare-and-set. A message held by a replica that
dies is redelivered after `failover_s` (the consumer's ack wait) to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from shared.protocol import codec, subjects
from shared.protocol.commands import CommandRecord, CommandState
from shared.runtime.tasks import KeyedWorkers

from .delivery import Delivery
from .lifecycle import TimerAction, Timing, moved, timer_action
from .store import Change, CommandStore

log = logging.getLogger(__name__)

FETCH_BATCH = 256
MIN_DELAY_S = 0.05
_FINAL = {
    TimerAction.EXPIRE: (CommandState.EXPIRED, "expired"),
    TimerAction.UNDELIVERED: (CommandState.FAILED, "undelivered"),
    TimerAction.EXECUTION_TIMEOUT: (CommandState.FAILED, "execution_timeout"),
}


def _delay(until: datetime | None, now: datetime, cap: float | None = None) -> float:
    seconds = (until - now).total_seconds() if until else (cap or 1.0)
    if cap is not None:
        seconds = min(seconds, cap)
    return max(seconds, MIN_DELAY_S)


class TimerWorker:
    def __init__(
        self,
        js: JetStreamContext,
        store: CommandStore,
        delivery: Delivery,
        timing: Timing,
        failover_s: float,
        offline_recheck_s: float,
        concurrency: int = 512,
    ) -> None:
        self.js = js
        self.store = store
        self.delivery = delivery
        self.timing = timing
        self.failover_s = failover_s
        self.offline_recheck_s = offline_recheck_s
        self.workers = KeyedWorkers(concurrency)

    async def run(self) -> None:
        sub = await self.js.pull_subscribe(
            subjects.TIMERS_ALL,
            durable=subjects.TIMERS_CONSUMER,
            stream=subjects.TIMERS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.failover_s,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.Error as err:
                    log.warning("timer fetch failed: %s", err)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    agent, _ = subjects.parse_timer(msg.subject)
                    await self.workers.submit(agent, functools.partial(self.fire, msg))
        finally:
            await self.workers.close()
            # A pull subscription left open would hold up the connection's drain.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def fire(self, msg: Msg) -> None:
        """Act on one timer firing, then remove the timer (final) or schedule its next firing."""
        _, command_id = subjects.parse_timer(msg.subject)
        for _ in range(4):
            got = await self.store.get(command_id, fresh=False)
            if got is None:
                await msg.ack()  # the record is gone (retention): nothing left to time
                return
            record = got[0]
            now = codec.utcnow()
            action, until = timer_action(record, now, self.timing)
            if action is TimerAction.DONE:
                await msg.ack()
                return
            if action is TimerAction.WAIT:
                await msg.nak(delay=_delay(until, now))
                return
            if action in (TimerAction.DELIVER, TimerAction.REDELIVER):
                if not await self.delivery.send(record):
                    await msg.nak(delay=_delay(until, now, cap=self.offline_recheck_s))
                    return
                continue
            await self.store.transition(command_id, self._finisher(action))
        await msg.nak(delay=1.0)

    def _finisher(self, action: TimerAction) -> Change:
        state, error = _FINAL[action]

        def change(current: CommandRecord) -> CommandRecord | None:
            now = codec.utcnow()
            if timer_action(current, now, self.timing)[0] is not action:
                return None
            return moved(current, state, now, error=error)

        return change
