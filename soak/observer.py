"""Evidence from outside the product: every lifecycle event, and every command's final record.

The observer subscribes to `edge.lifecycle.>` before the first submit, through all three nodes,
so it reconnects when its node dies; events published while it is away are lost to it (core
NATS), which is why the final records (`edge.commands.get`, the store's own `history`) are the
source of truth and the observed events only a cross-check whose gaps are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .submitter import GET, LIFECYCLE_ALL, call

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
GET_TIMEOUT_S = 3.0
GET_CONCURRENCY = 32


class Observer:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        # command id -> [state, previous_state, attempt, at, error, t_received]
        self.events: dict[str, list[list[Any]]] = {}
        self.final_seen: dict[str, str] = {}  # command id -> terminal state, as the events say
        self.count = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(LIFECYCLE_ALL, cb=self._on_event, pending_msgs_limit=1_000_000)
        await self.nc.flush(timeout=5)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            e = orjson.loads(msg.data)
            command_id = str(e["command_id"])
        except (ValueError, KeyError, TypeError):
            return
        self.count += 1
        state = e.get("state")
        self.events.setdefault(command_id, []).append(
            [state, e.get("previous_state"), e.get("attempt"), e.get("at"), e.get("error"), time.time()]
        )
        if state in TERMINAL:
            self.final_seen[command_id] = str(state)


class Records:
    """Final command records, read with `edge.commands.get` (a terminal record never changes again)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.records: dict[str, dict[str, Any]] = {}
        self.missing: set[str] = set()  # `not_found`
        self.unreadable: dict[str, str] = {}

    async def fetch(self, command_ids: list[str]) -> None:
        """Read every id not known final yet (bounded retries per id)."""
        todo = [c for c in command_ids if self.records.get(c, {}).get("state") not in TERMINAL]
        limit = asyncio.Semaphore(GET_CONCURRENCY)

        async def one(command_id: str) -> None:
            async with limit:
                for _ in range(3):
                    try:
                        reply = await call(self.nc, GET, {"command_id": command_id}, GET_TIMEOUT_S)
                    except (nats.errors.Error, TimeoutError) as err:
                        self.unreadable[command_id] = type(err).__name__
                        continue
                    self.unreadable.pop(command_id, None)
                    if reply.get("ok"):
                        reply.pop("ok")
                        self.records[command_id] = reply
                        self.missing.discard(command_id)
                    elif (reply.get("error") or {}).get("code") == "not_found":
                        self.missing.add(command_id)
                    else:
                        self.unreadable[command_id] = str(reply.get("error"))
                        continue
                    return

        await asyncio.gather(*(one(c) for c in todo))

    def final(self, command_id: str) -> bool:
        return self.records.get(command_id, {}).get("state") in TERMINAL
