"""The sessions this replica has sockets in: one `LocalSession` each, started on the first socket.

A `LocalSession` watches the session's state key and its connection entries in JetStream, so
this replica sees every version in order and every join and leave from any replica, and fans
them out to its own sockets. It also relays actions and typing published by any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared.broker.connection import NATS_ERRORS
from shared.broker.kv import Changes
from shared.protocol import codec, subjects
from shared.protocol.errors import CloseCode
from shared.protocol.miniapp import (
    ACTION_NOTICE,
    CONNECTION_RECORD,
    SESSION_RECORD,
    TYPING_NOTICE,
    ActionData,
    ConnectedData,
    ConnectionStatus,
    Peer,
    PresenceData,
    PresenceEvent,
    SessionRecord,
    Source,
    StateUpdateData,
    Update,
)
from shared.runtime.tasks import TaskOwner, cancel_and_wait

from .connection import TYPING, Connection
from .metrics import MiniAppGatewayMetrics
from .presence import Presence
from .state import StateStore

log = logging.getLogger(__name__)

WATCH_SYNC_TIMEOUT_S = 10.0
# A version this replica wrote and its watcher has not seen after this long: the watcher stalled.
STALE_AFTER_S = 0.5
# How long, and how often, a replica reads a session's key itself while its watcher is made afresh.
RECOVER_FOR_S, RECOVER_POLL_S = 30.0, 0.25
HISTORY_PATIENCE_S = 8.0
NOT_A_MEMBER = "not a member of this session"


@dataclass(slots=True)
class Member:
    """A connection entry as this replica's view of the session sees it."""

    user_id: str
    connection_id: str
    replica_id: str
    active: bool
    order: int  # revision of its first write: its place in the admission order


class LocalSession:
    def __init__(
        self,
        session_id: str,
        nc: NATS,
        store: StateStore,
        presence: Presence,
        metrics: MiniAppGatewayMetrics,
        owner: TaskOwner,
        open_by_default: bool,
    ) -> None:
        self.session_id = session_id
        self.owner = owner
        self.open_by_default = open_by_default
        self.nc = nc
        self.store = store
        self.presence = presence
        self.metrics = metrics
        self.connections: dict[str, Connection] = {}
        self.users = 0  # sockets holding this session (joining ones included)
        self.record = SessionRecord()
        self.revision = 0
        self.members: dict[str, Member] = {}  # by connection_id
        self.presence_seq = 0
        self._state_synced = asyncio.Event()
        self._presence_synced = asyncio.Event()
        self._seen = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self._state_changes: Changes | None = None
        self._stale_check: asyncio.TimerHandle | None = None
        self._taking = asyncio.Lock()  # the watcher and a recovery read take values one at a time
        self.closed = False

    # --- lifecycle ---

    async def start(self) -> None:
        self._subs.append(
            await self.nc.subscribe(subjects.miniapp_actions(self.session_id), cb=self._on_action)
        )
        self._subs.append(
            await self.nc.subscribe(subjects.miniapp_typing(self.session_id), cb=self._on_typing)
        )
        self._spawn(self._watch_state(), "session_state_watch")
        self._spawn(self._watch_presence(), "session_presence_watch")
        self._spawn(self._keep_alive(), "session_keep_alive")
        async with asyncio.timeout(WATCH_SYNC_TIMEOUT_S):
            await self._state_synced.wait()
            await self._presence_synced.wait()

    async def stop(self) -> None:
        self.closed = True
        if self._stale_check is not None:
            self._stale_check.cancel()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        await cancel_and_wait(self._tasks, WATCH_SYNC_TIMEOUT_S)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # A session that lost its view of the store cannot serve its sockets any more.
        self._tasks.append(self.owner.spawn(coro, name, on_failure=self._failed))

    def _failed(self, err: BaseException) -> None:
        log.error("session task failed", extra={"session_id": self.session_id})
        self.close_all(CloseCode.INTERNAL_ERROR, "internal error")

    # --- view of the session ---

    def count(self) -> int:
        return sum(1 for m in self.members.values() if m.active)

    def peers(self) -> list[Peer]:
        return [
            Peer(user_id=m.user_id, connection_id=m.connection_id) for m in self.members.values() if m.active
        ]

    def ahead_of(self, connection_id: str, order: int, user_id: str | None = None) -> int:
        """Connections admitted or waiting before `order` (of `user_id` only, if given): the ones a
        new connection queues behind."""
        return sum(
            1
            for m in self.members.values()
            if m.connection_id != connection_id and m.order < order and user_id in (None, m.user_id)
        )

    async def wait_seen(self, revision: int) -> None:
        """Until the presence view has applied the bucket up to `revision` (a write of ours)."""
        async with asyncio.timeout(WATCH_SYNC_TIMEOUT_S), self._seen:
            await self._seen.wait_for(lambda: self.presence_seq >= revision)

    def attach(self, conn: Connection) -> None:
        """Add a socket and queue its `connected` snapshot; later events reach it in order."""
        self.connections[conn.connection_id] = conn
        data = ConnectedData(
            session_id=self.session_id,
            user_id=conn.user_id,
            connection_id=conn.connection_id,
            connection_count=self.count(),
            peers=self.peers(),
            state=self.record.state,
            version=self.record.version,
        )
        conn.send("connected", codec.encode("connected", data))

    def detach(self, conn: Connection) -> None:
        self.connections.pop(conn.connection_id, None)

    def cached(self) -> tuple[SessionRecord, int]:
        return self.record, self.revision

    def broadcast(self, kind: str, frame: bytes, exclude: str | None = None) -> None:
        for connection_id, conn in list(self.connections.items()):
            if connection_id != exclude:
                conn.send(kind, frame)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.close_soon(code, reason)

    # --- state: every version, in order ---

    async def _watch_state(self) -> None:
        self._state_changes = changes = await self.store.bucket.changes(self.session_id)
        try:
            await self._follow_state(changes)
        finally:
            self._state_changes = None
            await changes.stop()

    def note_written(self, version: int) -> None:
        """This replica wrote `version`: if the watcher has not seen it half a second later, its
        consumer is gone with a NATS node (nats-py would notice only after many missed heartbeats)."""
        if version <= self.record.version or self._stale_check is not None:
            return
        loop = asyncio.get_running_loop()
        self._stale_check = loop.call_later(STALE_AFTER_S, self._check_stale, version)

    def _check_stale(self, version: int) -> None:
        self._stale_check = None
        if self.record.version < version and self._state_changes is not None:
            log.info("session watcher stalled, following afresh", extra={"session_id": self.session_id})
            self.metrics.watcher_resumes.inc()
            self._spawn(self._recover(self._state_changes, version), "session_watch_recover")

    async def _recover(self, changes: Changes, version: int) -> None:
        """Make the watcher's consumer afresh and, until it delivers `version`, read the key itself:
        making a consumer waits for a meta leader, reading does not, so the players' pause ends
        with the election of the bucket's leader."""
        resuming = asyncio.ensure_future(changes.resume())
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + RECOVER_FOR_S
        try:
            while self.record.version < version and loop.time() < give_up_at:
                with contextlib.suppress(*NATS_ERRORS):
                    read = await self.store.bucket.read(self.session_id)
                    await self._take(read.value, read.revision)
                if self.record.version < version:
                    await asyncio.sleep(RECOVER_POLL_S)
            with contextlib.suppress(*NATS_ERRORS):
                await resuming  # cut short, the watcher would be left with no consumer at all
        except asyncio.CancelledError:
            resuming.cancel()  # the session is stopping
            raise

    async def _follow_state(self, changes: Changes) -> None:
        async for entry in changes:
            if entry is None:
                self._state_synced.set()
                continue
            await self._take(entry.value, entry.revision)

    async def _take(self, value: bytes | None, revision: int) -> None:
        """One stored value of the session's key, from the watcher or read while it stalled; a
        revision already taken (from the other of the two) changes nothing."""
        async with self._taking:
            if revision <= self.revision:
                return
            if value is None:
                if self.record.version:
                    ids = {"session_id": self.session_id}
                    log.warning("session state vanished under live sockets", extra=ids)
                    self.close_all(CloseCode.SERVICE_RESTART, "session reset")
                self.record, self.revision = SessionRecord(), revision
                return
            before = self.record
            record = SESSION_RECORD.validate_json(value)
            if self._state_synced.is_set() and record.version > before.version + len(record.updates):
                # Versions went by that this watcher never saw (its node lost, a reconnect): they
                # are in the records the bucket still keeps.
                await self._catch_up(before.version, record)
            self._apply_record(record)
            # Only now: `cached()` pairs the record with its revision for writers' compare-and-set,
            # and a writer must never get a newer revision with an older record.
            self.revision = revision
            if (before.configured, before.members) != (self.record.configured, self.record.members):
                self._expel_non_members()

    async def _catch_up(self, seen: int, record: SessionRecord) -> None:
        """Send the sockets the versions after `seen` and before `record`'s own updates, read from
        the records the bucket still keeps (64 revisions), so none of them sees a gap, which would
        cost each a reconnect. When it no longer keeps them all, `_apply_record` sees the gap and
        the sockets reconnect (1013): every socket must see each version carry the same update."""
        first = record.updates[0].version if record.updates else record.version + 1
        missed: dict[int, Update] = {}
        for value in await self._history():
            for update in SESSION_RECORD.validate_json(value).updates:
                if seen < update.version < first:
                    missed[update.version] = update
        if sorted(missed) != list(range(seen + 1, first)):
            return
        self.record = self.record.model_copy(update={"version": first - 1})
        self._broadcast_updates([missed[v] for v in range(seen + 1, first)])
        self.metrics.watcher_catch_ups.inc()

    async def _history(self) -> list[bytes]:
        """The key's kept values; asked again while the store elects a leader (the sockets wait on
        it, which beats the lossy catch-up), empty if it never answers."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + HISTORY_PATIENCE_S
        while True:
            try:
                async with asyncio.timeout(max(0.5, give_up_at - loop.time())):
                    return await self.store.bucket.history(self.session_id)
            except NATS_ERRORS:
                if loop.time() >= give_up_at:
                    return []
                await asyncio.sleep(RECOVER_POLL_S)

    def _apply_record(self, record: SessionRecord) -> None:
        current = self.record.version
        if not self._state_synced.is_set() or record.version <= current:
            if record.version >= current:
                self.record = record
            return
        self.record = record
        if not record.updates or record.updates[0].version != current + 1:
            # More versions went by than the bucket keeps: sockets could not be told in order.
            log.warning("session watcher fell behind", extra={"session_id": self.session_id})
            self.close_all(CloseCode.TRY_AGAIN_LATER, "fell behind, reconnect")
            return
        self._broadcast_updates(record.updates)
        self.metrics.fanout.observe(max(0.0, time.time() - record.at))

    def _broadcast_updates(self, updates: list[Update]) -> None:
        for update in updates:
            peer = update.source is Source.PEER
            data = StateUpdateData(
                patch=update.patch,
                version=update.version,
                source=update.source,
                user_id=update.user_id if peer else None,
                connection_id=update.connection_id if peer else None,
                client_msg_id=update.client_msg_id,
            )
            self.broadcast("state_update", codec.encode("state_update", data))

    def admits(self, user_id: str) -> bool:
        """Whether `user_id` may be in the session, as this replica's view of it says."""
        return self.record.admits(user_id, self.open_by_default)

    def _expel_non_members(self) -> None:
        """The member list changed: whoever it no longer admits is closed (and reported `left`)."""
        for conn in list(self.connections.values()):
            if not self.admits(conn.user_id):
                conn.close_soon(CloseCode.FORBIDDEN, NOT_A_MEMBER)

    async def _keep_alive(self) -> None:
        """Renew the idle TTL of a session that has sockets but no updates."""
        period = max(1.0, self.store.idle_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            if time.time() - self.record.at >= period:
                with contextlib.suppress(*NATS_ERRORS):
                    await self.store.touch(self.session_id, self.record, self.revision)

    # --- presence: joins and leaves from every replica ---

    async def _watch_presence(self) -> None:
        changes = await self.presence.bucket.changes(subjects.miniapp_connections_of_session(self.session_id))
        try:
            async for entry in changes:
                if entry is None:
                    self._presence_synced.set()
                    continue
                self._apply_entry(entry.key, entry.value, entry.revision)
                async with self._seen:
                    self.presence_seq = max(self.presence_seq, entry.revision)
                    self._seen.notify_all()
        finally:
            await changes.stop()

    def _apply_entry(self, key: str, value: bytes | None, revision: int) -> None:
        parsed = subjects.parse_connection_key(key)
        if parsed is None:
            return
        replica_id, _, connection_id = parsed
        if value is None:  # deleted, purged or expired
            gone = self.members.pop(connection_id, None)
            if gone is not None and gone.active:
                self._announce(PresenceEvent.LEFT, gone)
            return
        if self.presence.is_dead(replica_id):
            return
        self.presence.check_replica(replica_id)
        try:
            record = CONNECTION_RECORD.validate_json(value or b"")
        except ValidationError:
            log.warning("unreadable presence entry %s", key)
            return
        before = self.members.get(connection_id)
        member = Member(
            user_id=record.user_id,
            connection_id=connection_id,
            replica_id=replica_id,
            active=record.status is ConnectionStatus.ACTIVE,
            order=record.created_rev or revision,
        )
        self.members[connection_id] = member
        if member.active and (before is None or not before.active):
            self._announce(PresenceEvent.JOINED, member)

    def drop_replica(self, replica_id: str) -> None:
        """A replica died: its connections left, whether or not its entries are deleted yet."""
        for member in [m for m in self.members.values() if m.replica_id == replica_id]:
            del self.members[member.connection_id]
            if member.active:
                self._announce(PresenceEvent.LEFT, member)

    def _announce(self, event: PresenceEvent, member: Member) -> None:
        data = PresenceData(
            event=event,
            user_id=member.user_id,
            connection_id=member.connection_id,
            connection_count=self.count(),
        )
        self.broadcast("presence", codec.encode("presence", data), exclude=member.connection_id)

    # --- relays ---

    async def _on_action(self, msg: Msg) -> None:
        try:
            notice = ACTION_NOTICE.validate_json(msg.data)
        except ValidationError:
            return
        data = ActionData(
            action=notice.action,
            payload=notice.payload,
            user_id=notice.user_id,
            connection_id=notice.connection_id,
        )
        # `payload` is a contract field even when null, which `encode` would leave out.
        frame = codec.encode("action", data.model_dump(mode="json"))
        self.broadcast("action", frame, exclude=notice.connection_id)

    async def _on_typing(self, msg: Msg) -> None:
        try:
            notice = TYPING_NOTICE.validate_json(msg.data)
        except ValidationError:
            return
        data = PresenceData(
            event=PresenceEvent.TYPING,
            user_id=notice.user_id,
            connection_id=notice.connection_id,
            connection_count=self.count(),
            is_typing=notice.is_typing,
        )
        self.broadcast(TYPING, codec.encode("presence", data), exclude=notice.connection_id)
