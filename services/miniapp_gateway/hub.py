"""Admission of sockets into sessions, and the registry of this replica's `LocalSession`s.

Admission under the cross-replica caps (per session, and per user in a session): a joining socket
first writes a pending presence entry; the entry's revision is its place in one global order. Once
this replica's view has caught up to that revision, it has seen every entry written before it, from
every replica, so counting the entries ahead of it decides admission the same way everywhere: a
cap is never exceeded, even when sockets join through several replicas at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from nats.aio.client import Client as NATS

from shared.broker.connection import NATS_ERRORS
from shared.protocol.errors import CloseCode, IkiroError
from shared.protocol.miniapp import ConnectionRecord, ConnectionStatus, PresenceEvent
from shared.runtime.tasks import TaskOwner

from .connection import Connection
from .metrics import MiniAppGatewayMetrics
from .presence import Presence
from .sessions import NOT_A_MEMBER, LocalSession
from .state import StateStore

log = logging.getLogger(__name__)


class SessionFull(IkiroError):
    """The session, or the user's share of it, holds its maximum number of connections (close 4029)."""


SESSION_FULL = "session full"
USER_FULL = "too many connections for this user"


class NotMember(IkiroError):
    """The session's member list does not name the user (close 4003)."""


class Hub:
    def __init__(
        self,
        nc: NATS,
        store: StateStore,
        presence: Presence,
        metrics: MiniAppGatewayMetrics,
        owner: TaskOwner,
        max_connections: int,
        max_per_user: int,
        open_by_default: bool,
    ) -> None:
        self.nc = nc
        self.store = store
        self.presence = presence
        self.metrics = metrics
        self.owner = owner
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self.open_by_default = open_by_default
        self.sessions: dict[str, LocalSession] = {}
        self.connections: set[Connection] = set()
        self.all_left = asyncio.Event()
        self.all_left.set()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        presence.leases.on_death.append(self._replica_died)
        presence.leases.on_fenced = self._fenced
        presence.leases.on_retaken = self._register_again

    async def join(self, conn: Connection) -> LocalSession:
        """Admit `conn` into its session and queue its `connected` frame, or raise `NotMember` or
        `SessionFull` before anything of the session reaches it or anyone sees it."""
        session = await self._acquire(conn.session_id)
        replica_id = conn.replica_id = self.presence.replica_id
        written = False
        try:
            if not session.admits(conn.user_id) and not await self._admitted_by_store(conn):
                raise NotMember(NOT_A_MEMBER)
            revision = await self.presence.add(conn.session_id, conn.connection_id, conn.user_id)
            written = True
            await session.wait_seen(revision)
            if session.ahead_of(conn.connection_id, revision) >= self.max_connections:
                raise SessionFull(SESSION_FULL)
            if session.ahead_of(conn.connection_id, revision, conn.user_id) >= self.max_per_user:
                raise SessionFull(USER_FULL)
            record = ConnectionRecord(
                session_id=conn.session_id,
                connection_id=conn.connection_id,
                user_id=conn.user_id,
                replica_id=replica_id,
                status=ConnectionStatus.PENDING,
            )
            activated = await self.presence.activate(record, revision)
            await session.wait_seen(activated)
        except BaseException:
            if written:
                with contextlib.suppress(*NATS_ERRORS):
                    await self.presence.remove(replica_id, conn.session_id, conn.connection_id)
            await self._release(session)
            raise
        session.attach(conn)
        self.connections.add(conn)
        self.all_left.clear()
        self.metrics.sockets_open.inc()
        await self.presence.publish(
            conn.session_id, PresenceEvent.JOINED, conn.user_id, conn.connection_id, session.count()
        )
        return session

    async def leave(self, conn: Connection, session: LocalSession) -> None:
        """Remove an admitted socket: its entry goes, every replica reports it `left`."""
        session.detach(conn)
        self.connections.discard(conn)
        self.metrics.sockets_open.dec()
        try:
            with contextlib.suppress(*NATS_ERRORS):
                await self.presence.remove(conn.replica_id, conn.session_id, conn.connection_id)
            count = sum(
                1 for m in session.members.values() if m.active and m.connection_id != conn.connection_id
            )
            await self.presence.publish(
                conn.session_id, PresenceEvent.LEFT, conn.user_id, conn.connection_id, count
            )
        finally:
            await self._release(session)
            if not self.connections:
                self.all_left.set()

    async def _admitted_by_store(self, conn: Connection) -> bool:
        """A refusal is checked once against the stored record: the watched one may lag a configure."""
        record, _ = await self.store.load(conn.session_id, fresh=True)
        return record.admits(conn.user_id, self.open_by_default)

    async def _acquire(self, session_id: str) -> LocalSession:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            session = self.sessions.get(session_id)
            if session is None or session.closed:
                session = LocalSession(
                    session_id,
                    self.nc,
                    self.store,
                    self.presence,
                    self.metrics,
                    self.owner,
                    self.open_by_default,
                )
                try:
                    await session.start()
                except BaseException:
                    await session.stop()
                    raise
                self.sessions[session_id] = session
                self.metrics.sessions_active.set(len(self.sessions))
            session.users += 1
            return session

    async def _release(self, session: LocalSession) -> None:
        session.users -= 1
        if session.users > 0 or session.closed:
            return
        session.closed = True
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        self.metrics.sessions_active.set(len(self.sessions))
        await session.stop()

    def _replica_died(self, replica_id: str) -> None:
        for session in list(self.sessions.values()):
            session.drop_replica(replica_id)

    async def _fenced(self) -> None:
        log.warning("presence lease lost: this replica's connections are reported left elsewhere")

    async def _register_again(self) -> None:
        """The lease ran out while the store was away (an election longer than its TTL), so the
        other replicas have reported this one's connections `left`. A NATS node lost is a pause,
        not a disconnect: the sockets stay open and are written again under the new lease (the
        others see them `joined`); only one that cannot be written is closed, with 1012."""
        for conn in list(self.connections):
            session = self.sessions.get(conn.session_id)
            if session is None:
                continue
            conn.replica_id = self.presence.replica_id
            try:
                revision = await self.presence.add(conn.session_id, conn.connection_id, conn.user_id)
                record = ConnectionRecord(
                    session_id=conn.session_id,
                    connection_id=conn.connection_id,
                    user_id=conn.user_id,
                    replica_id=conn.replica_id,
                    status=ConnectionStatus.PENDING,
                )
                await self.presence.activate(record, revision)
                await self.presence.publish(
                    conn.session_id, PresenceEvent.JOINED, conn.user_id, conn.connection_id, session.count()
                )
            except NATS_ERRORS as err:
                log.warning("cannot register a connection again: %s", err)
                conn.close_soon(CloseCode.SERVICE_RESTART, "gateway lost its lease, reconnect")

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections):
            conn.close_soon(code, reason)
