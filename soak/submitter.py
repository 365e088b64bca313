"""The careful internal caller: commands submitted at a steady rate, each with its own `command_id`.

A submit that times out (or finds no dispatcher, or gets `unavailable`/`internal_error`) is sent
again with the same id and the same content, as the contract's idempotent submit invites, until
it is answered or `GIVE_UP_S` has passed. Submissions are open-loop: a slow answer never slows
the rate, so the load stays the same through every fault.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS

SUBMIT = "edge.commands.submit"
GET = "edge.commands.get"
LIFECYCLE_ALL = "edge.lifecycle.>"
TRY_TIMEOUT_S = 3.0
RETRY_PAUSE_S = 0.5
GIVE_UP_S = 45.0
MAX_IN_FLIGHT = 2000
RETRIABLE_CODES = frozenset({"unavailable", "internal_error"})


async def connect(urls: str, name: str, stats: Counter[str] | None = None) -> NATS:
    """A soak client on every node; pings often, so a paused node is left within seconds."""
    seen = stats if stats is not None else Counter()

    async def on_error(err: Exception) -> None:
        seen[f"{name}:error:{type(err).__name__}"] += 1

    async def on_disconnected() -> None:
        seen[f"{name}:disconnected"] += 1

    async def on_reconnected() -> None:
        seen[f"{name}:reconnected"] += 1

    return await nats.connect(
        servers=urls.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        ping_interval=2,
        max_outstanding_pings=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


async def call(nc: NATS, subject: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One request; the reply's JSON (which may be `{"ok": false, ...}`)."""
    msg = await nc.request(subject, orjson.dumps(body), timeout=timeout_s)
    reply = orjson.loads(msg.data)
    if not isinstance(reply, dict):
        raise ValueError(f"reply is not an object: {reply!r}")
    return reply


@dataclass(slots=True)
class Submission:
    command_id: str
    agent: str
    first_at: float
    tries: list[list[Any]] = field(default_factory=list)  # [t_sent, outcome, seconds]
    accepted_at: float | None = None
    duplicate: bool = False
    refused: str | None = None  # a final error code, or "gave_up"


class Submitter:
    def __init__(self, nc: NATS, agents: list[str], rate_per_s: float, rng: random.Random) -> None:
        self.nc = nc
        self.agents = agents
        self.rate_per_s = rate_per_s
        self.rng = rng
        self.submissions: dict[str, Submission] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Submit at the steady rate until `stop`; then wait (bounded) for the answers in flight."""
        interval = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        while not stop.is_set():
            if len(self._tasks) < MAX_IN_FLIGHT:
                self._n += 1
                task = asyncio.create_task(self._submit(self.rng.choice(self.agents), self._n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def finish(self) -> None:
        """Wait (bounded) for the submissions still being answered or retried."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=GIVE_UP_S + TRY_TIMEOUT_S + 5)
        await self.cancel()

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _submit(self, agent: str, n: int) -> None:
        command_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        body = {
            "edge_agent_id": agent,
            "command_type": "send_message_now",
            "payload": {"thread_id": "t", "text": f"soak {n}"},
            "command_id": command_id,
        }
        sub = self.submissions[command_id] = Submission(command_id, agent, time.time())
        while True:
            sent = time.time()
            try:
                reply = await call(self.nc, SUBMIT, body, TRY_TIMEOUT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                outcome = "timeout"
            except nats.errors.NoRespondersError:
                outcome = "no_responders"
            except nats.errors.Error as err:
                outcome = f"nats:{type(err).__name__}"
            else:
                if reply.get("ok"):
                    sub.accepted_at = time.time()
                    sub.duplicate = bool(reply.get("duplicate"))
                    sub.tries.append([sent, "duplicate" if sub.duplicate else "accepted", time.time() - sent])
                    return
                outcome = str((reply.get("error") or {}).get("code", "error"))
                if outcome not in RETRIABLE_CODES:
                    sub.tries.append([sent, outcome, time.time() - sent])
                    sub.refused = outcome
                    return
            sub.tries.append([sent, outcome, time.time() - sent])
            if time.time() - sub.first_at > GIVE_UP_S:
                sub.refused = "gave_up"
                return
            await asyncio.sleep(RETRY_PAUSE_S if outcome != "timeout" else 0)
