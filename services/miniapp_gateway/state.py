"""Authoritative session state in JetStream KV: one key per session, one revision per version.

Every accepted update is a compare-and-set on the key's revision, so concurrent writers on any
replica produce versions 1, 2, 3, ... with no gaps and no forks. Writers on one replica queue on a
per-session lock first, which leaves only cross-replica races to the compare-and-set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Any

import orjson

from shared.broker.kv import Bucket, ModelCodec, WrongRevision, compare_and_set
from shared.protocol import codec
from shared.protocol.errors import ErrorCode, IkiroError
from shared.protocol.miniapp import SESSION_RECORD, SessionRecord, Source

from .mergepatch import merge_patch
from .metrics import MiniAppGatewayMetrics

SESSION_CODEC = ModelCodec(SESSION_RECORD)


class StateStore:
    def __init__(
        self, bucket: Bucket, metrics: MiniAppGatewayMetrics, max_state_bytes: int, idle_ttl_s: int
    ) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.max_state_bytes = max_state_bytes
        self.idle_ttl_s = idle_ttl_s
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

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
        user_id: str | None = None,
        connection_id: str | None = None,
        client_msg_id: str | None = None,
        cached: tuple[SessionRecord, int] | None = None,
    ) -> SessionRecord:
        """Apply one merge patch as the next version; refused updates change nothing."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            try:
                record = await self._apply(
                    session_id, patch, base_version, source, user_id, connection_id, client_msg_id, cached
                )
            except IkiroError as err:
                self.metrics.state_updates.labels(source=source, result=err.code).inc()
                raise
            self.metrics.state_updates.labels(source=source, result="accepted").inc()
            return record

    async def _apply(
        self,
        session_id: str,
        patch: dict[str, Any],
        base_version: int | None,
        source: Source,
        user_id: str | None,
        connection_id: str | None,
        client_msg_id: str | None,
        cached: tuple[SessionRecord, int] | None,
    ) -> SessionRecord:
        def next_version(current: SessionRecord | None) -> SessionRecord:
            current = current or SessionRecord()
            if base_version is not None and base_version != current.version:
                raise IkiroError(
                    f"base_version {base_version} is not the current version {current.version}",
                    ErrorCode.VERSION_CONFLICT,
                    version=current.version,
                )
            state = merge_patch(current.state, patch)
            size = len(orjson.dumps(state))
            if size > self.max_state_bytes:
                raise IkiroError(
                    f"state would be {size} bytes, over the {self.max_state_bytes} byte limit",
                    ErrorCode.STATE_TOO_LARGE,
                )
            return SessionRecord(
                state=state,
                version=current.version + 1,
                patch=patch,
                source=source,
                user_id=user_id,
                connection_id=connection_id,
                client_msg_id=client_msg_id,
                at=time.time(),
                configured=current.configured,
                members=current.members,
            )

        done = await compare_and_set(
            self.bucket,
            session_id,
            SESSION_CODEC,
            next_version,
            cached=cached,
            ttl_s=self.idle_ttl_s,
            on_conflict=self.metrics.write_conflicts.inc,
        )
        assert done is not None
        return done[0]

    async def configure(
        self, session_id: str, members: list[str] | None
    ) -> tuple[SessionRecord, SessionRecord]:
        """Set who may join (None: every authenticated user); the record before and after."""

        def configured(current: SessionRecord | None) -> SessionRecord:
            current = current or SessionRecord()
            listed = list(dict.fromkeys(members)) if members is not None else None
            return current.model_copy(
                update={"patch": None, "at": time.time(), "configured": True, "members": listed}
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
        renewed = current.model_copy(update={"patch": None, "at": time.time()})
        # A concurrent write renewed it too, so losing the compare-and-set is fine.
        with contextlib.suppress(WrongRevision):
            await self.bucket.write(session_id, codec.dumps(renewed), revision, self.idle_ttl_s)
