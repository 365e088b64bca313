"""Authoritative session state in JetStream KV: one key per session, versions 1, 2, 3, ... in order.

Every write is a compare-and-set on the key's revision, so concurrent writers on any replica
produce versions with no gaps and no forks. Updates that arrive on one replica while its write
for the session is on its way are written together in the next one (each still its own version,
checked against the version before it), so a burst of updates costs a few writes, not one each,
and the replicas race each other only once per write.

A NATS node lost is a pause (DESIGN section 5): while the bucket has no leader, a write is tried
again, the session's later updates waiting behind it in order, until `WAIT_FOR_STORE_S` after the
oldest arrived; only then is it refused `unavailable`. A write that timed out may have landed:
each carries an id the record remembers (`SessionRecord.writes`), so the retry finds it there
instead of applying the updates twice. What waits is bounded per session and per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.broker.connection import NATS_ERRORS
from shared.broker.kv import Bucket, Change, ModelCodec, WrongRevision, compare_and_set
from shared.protocol import codec
from shared.protocol.errors import ErrorCode, IkiroError, Unavailable
from shared.protocol.miniapp import (
    MAX_FRAME_BYTES,
    RECENT_WRITES,
    SESSION_RECORD,
    SessionRecord,
    Source,
    Update,
)
from shared.runtime.tasks import TaskOwner

from .mergepatch import merge_patch
from .metrics import MiniAppGatewayMetrics

log = logging.getLogger(__name__)

SESSION_CODEC = ModelCodec(SESSION_RECORD)
# The patches written together in one record: at most one frame's worth, so a record stays within
# the bucket's value limit (state + one frame + members).
BATCH_BYTES = MAX_FRAME_BYTES
# How long an update waits for a store that does not answer (a leader election takes about 5 s).
WAIT_FOR_STORE_S = 10.0
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 1.0
LAST_TRY_S = 1.0
# Updates waiting on one replica, per session and in all. A game of 10 players sending 10 updates
# a second fills a session's count in a 10 s election; the byte bounds keep the worst case (every
# update a full 64 KiB frame) well inside a replica's memory limit.
MAX_WAITING_PER_SESSION, MAX_WAITING_BYTES_PER_SESSION = 1_000, 4 * 1024 * 1024
MAX_WAITING, MAX_WAITING_BYTES = 20_000, 64 * 1024 * 1024


@dataclass(slots=True)
class _Pending:
    patch: dict[str, Any]
    size: int
    base_version: int | None
    source: Source
    user_id: str | None
    connection_id: str | None
    client_msg_id: str | None
    done: asyncio.Future[int]  # the version it became, or the error that refused it
    arrived: float  # loop time


@dataclass(slots=True)
class _Queue:
    """One session's updates on this replica, waiting for the write in flight to finish."""

    pending: list[_Pending] = field(default_factory=list)
    cached: tuple[SessionRecord, int] | None = None
    waiting_bytes: int = 0


class StateStore:
    def __init__(
        self,
        bucket: Bucket,
        metrics: MiniAppGatewayMetrics,
        owner: TaskOwner,
        max_state_bytes: int,
        idle_ttl_s: int,
    ) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.owner = owner
        self.max_state_bytes = max_state_bytes
        self.idle_ttl_s = idle_ttl_s
        self._queues: dict[str, _Queue] = {}
        self._waiting = 0  # updates queued or being written, on every session
        self._waiting_bytes = 0

    async def load(self, session_id: str, fresh: bool = False) -> tuple[SessionRecord, int]:
        """The session's record and revision; an empty version-0 record for a new session."""
        found = await self.bucket.get(session_id, SESSION_RECORD, fresh)
        return found or (SessionRecord(), 0)

    async def apply(
        self,
        session_id: str,
        patch: dict[str, Any],
        base_version: int | None,
        source: Source,
        cached: tuple[SessionRecord, int] | None = None,
    ) -> int:
        """Apply one merge patch as the next version and return it; a refused update changes nothing
        and raises its error. `cached` is this replica's view of the record, which may lag."""
        return await self.submit(session_id, patch, base_version, source, cached=cached)

    def submit(
        self,
        session_id: str,
        patch: dict[str, Any],
        base_version: int | None,
        source: Source,
        user_id: str | None = None,
        connection_id: str | None = None,
        client_msg_id: str | None = None,
        cached: tuple[SessionRecord, int] | None = None,
    ) -> asyncio.Future[int]:
        """Queue one merge patch behind the session's earlier ones; the future is the version it
        becomes, or the error that refused it. Raises `Unavailable` at once when too much waits."""
        loop = asyncio.get_running_loop()
        size = len(codec.dumps(patch))
        queue = self._queues.get(session_id)
        if (
            self._waiting >= MAX_WAITING
            or self._waiting_bytes + size > MAX_WAITING_BYTES
            or (queue is not None and len(queue.pending) >= MAX_WAITING_PER_SESSION)
            or (queue is not None and queue.waiting_bytes + size > MAX_WAITING_BYTES_PER_SESSION)
        ):
            self.metrics.state_updates.labels(source=source, result=ErrorCode.UNAVAILABLE).inc()
            raise Unavailable("too many updates are waiting for the state store; try again")
        done: asyncio.Future[int] = loop.create_future()
        update = _Pending(
            patch, size, base_version, source, user_id, connection_id, client_msg_id, done, loop.time()
        )
        if queue is None:
            queue = self._queues[session_id] = _Queue(cached=cached)
            self.owner.spawn(self._write_all(session_id, queue), "session_write")
        queue.pending.append(update)
        queue.waiting_bytes += size
        self._waiting += 1
        self._waiting_bytes += size

        def settled(_: asyncio.Future[int]) -> None:
            queue.waiting_bytes -= size
            self._waiting -= 1
            self._waiting_bytes -= size

        done.add_done_callback(settled)
        return done

    async def _write_all(self, session_id: str, queue: _Queue) -> None:
        """Write the session's queued updates, a batch per write, until none is left."""
        batch: list[_Pending] = []
        try:
            while queue.pending:
                batch = []
                size = 0
                while queue.pending and (not batch or size + queue.pending[0].size <= BATCH_BYTES):
                    size += queue.pending[0].size
                    batch.append(queue.pending.pop(0))
                cached, queue.cached = queue.cached, None
                await self._write(session_id, batch, cached)
        except BaseException as err:
            # Every sender awaits its update's outcome: none may be left waiting, whatever happened.
            failure = (
                err if isinstance(err, IkiroError) else IkiroError("internal error", ErrorCode.INTERNAL_ERROR)
            )
            for update in (*batch, *queue.pending):
                if not update.done.done():  # its sender may have gone (a cancelled await)
                    update.done.set_exception(failure)
            raise
        finally:
            del self._queues[session_id]

    async def _write(
        self, session_id: str, batch: list[_Pending], cached: tuple[SessionRecord, int] | None
    ) -> None:
        outcomes: list[int | IkiroError] = []
        write_id = uuid.uuid4().hex[:16]
        landed = False

        def next_versions(current: SessionRecord | None) -> SessionRecord | None:
            nonlocal landed
            current = current or SessionRecord()
            if write_id in current.writes:
                # An earlier attempt that timed out did land: its outcomes are the ones computed last.
                landed = True
                return None
            outcomes.clear()
            state, version, updates = current.state, current.version, []
            for item in batch:
                if item.base_version is not None and item.base_version != version:
                    outcomes.append(
                        IkiroError(
                            f"base_version {item.base_version} is not the current version {version}",
                            ErrorCode.VERSION_CONFLICT,
                            version=version,
                        )
                    )
                    continue
                merged = merge_patch(state, item.patch)
                size = len(codec.dumps(merged))
                if size > self.max_state_bytes:
                    outcomes.append(
                        IkiroError(
                            f"state would be {size} bytes, over the {self.max_state_bytes} byte limit",
                            ErrorCode.STATE_TOO_LARGE,
                        )
                    )
                    continue
                state, version = merged, version + 1
                updates.append(
                    Update(
                        version=version,
                        patch=item.patch,
                        source=item.source,
                        user_id=item.user_id,
                        connection_id=item.connection_id,
                        client_msg_id=item.client_msg_id,
                    )
                )
                outcomes.append(version)
            if not updates:
                return None
            writes = [*current.writes[-(RECENT_WRITES - 1) :], write_id]
            return current.model_copy(
                update={
                    "state": state,
                    "version": version,
                    "updates": updates,
                    "at": time.time(),
                    "writes": writes,
                }
            )

        loop = asyncio.get_running_loop()
        deadline = batch[0].arrived + WAIT_FOR_STORE_S
        retry_s = RETRY_FIRST_S
        while True:
            try:
                # Each try ends by the deadline (a request to a leader that is gone would wait out
                # its own timeout); one that waited its turn past it still gets a short one.
                async with asyncio.timeout(max(deadline - loop.time(), LAST_TRY_S)):
                    written = await self._compare_and_set(session_id, next_versions, cached)
                    if (
                        written is None
                        and not landed
                        and cached is not None
                        and any(isinstance(o, IkiroError) for o in outcomes)
                    ):
                        # Refused against this replica's view, which may lag the store: ask it.
                        await self._compare_and_set(session_id, next_versions, None)
                break
            except IkiroError as err:
                outcomes = [err] * len(batch)
                break
            except NATS_ERRORS as err:
                # No leader (a node lost, an election): try again, from the store, until the deadline.
                cached = None
                left = deadline - loop.time()
                if left <= 0:
                    log.warning("session write failed: %s", err, extra={"session_id": session_id})
                    refused = Unavailable("the state store did not answer; the update may yet appear")
                    outcomes = [refused] * len(batch)
                    break
                self.metrics.state_write_retries.inc()
                await asyncio.sleep(min(retry_s, left))
                retry_s = min(retry_s * 2, RETRY_MAX_S)
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, IkiroError):
                self.metrics.state_updates.labels(source=item.source, result=outcome.code).inc()
                if not item.done.done():
                    item.done.set_exception(outcome)
            else:
                self.metrics.state_updates.labels(source=item.source, result="accepted").inc()
                if not item.done.done():
                    item.done.set_result(outcome)

    async def _compare_and_set(
        self, session_id: str, change: Change[SessionRecord], cached: tuple[SessionRecord, int] | None
    ) -> SessionRecord | None:
        done = await compare_and_set(
            self.bucket,
            session_id,
            SESSION_CODEC,
            change,
            cached=cached,
            ttl_s=self.idle_ttl_s,
            on_conflict=self.metrics.write_conflicts.inc,
        )
        return done[0] if done is not None else None

    async def configure(
        self, session_id: str, members: list[str] | None
    ) -> tuple[SessionRecord, SessionRecord]:
        """Set who may join (None: every authenticated user); the record before and after."""

        def configured(current: SessionRecord | None) -> SessionRecord:
            current = current or SessionRecord()
            listed = list(dict.fromkeys(members)) if members is not None else None
            return current.model_copy(
                update={"updates": [], "at": time.time(), "configured": True, "members": listed}
            )

        done = await compare_and_set(
            self.bucket,
            session_id,
            SESSION_CODEC,
            configured,
            ttl_s=self.idle_ttl_s,
            on_conflict=self.metrics.write_conflicts.inc,
        )
        assert done is not None
        new, old, _ = done
        return old or SessionRecord(), new

    async def touch(self, session_id: str, current: SessionRecord, revision: int) -> None:
        """Renew the idle TTL of a session that still has connections (same version, no patch)."""
        renewed = current.model_copy(update={"updates": [], "at": time.time()})
        # A concurrent write renewed it too, so losing the compare-and-set is fine.
        with contextlib.suppress(WrongRevision):
            await self.bucket.write(session_id, codec.dumps(renewed), revision, self.idle_ttl_s)
