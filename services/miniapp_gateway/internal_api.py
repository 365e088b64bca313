"""The internal NATS API (DESIGN section 5): server-sourced state updates and session reads.

Any replica answers (queue group); replies are `{"ok": true, ...}` or `{"ok": false, "error"}`.
"""

from __future__ import annotations

from typing import Any

from shared.broker.connection import Handler
from shared.protocol import subjects
from shared.protocol.commands import parse_request
from shared.protocol.miniapp import (
    CONFIGURE_REQUEST,
    GET_REQUEST,
    STATE_UPDATE_REQUEST,
    ConfigureReply,
    GetReply,
    Peer,
    Source,
    StateUpdateReply,
)

from .hub import Hub
from .state import StateStore


class InternalApi:
    def __init__(self, store: StateStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub

    def routes(self) -> dict[str, Handler]:
        return {
            subjects.MINIAPP_STATE_UPDATE: self.handle_state_update,
            subjects.MINIAPP_GET: self.handle_get,
            subjects.MINIAPP_CONFIGURE: self.handle_configure,
        }

    async def handle_state_update(self, body: bytes) -> dict[str, Any]:
        """Apply a server-sourced merge patch; reply with the new version."""
        request = parse_request(STATE_UPDATE_REQUEST, body)
        session = self.hub.sessions.get(request.session_id)
        version = await self.store.apply(
            request.session_id,
            request.patch,
            request.base_version,
            Source.SERVER,
            cached=session.cached() if session is not None else None,
        )
        return StateUpdateReply(version=version).model_dump()

    async def handle_get(self, body: bytes) -> dict[str, Any]:
        """The session's state, version, members and who is connected, across every replica."""
        request = parse_request(GET_REQUEST, body)
        record, _ = await self.store.load(request.session_id)
        peers = await self._peers(request.session_id)
        reply = GetReply(
            state=record.state,
            version=record.version,
            connection_count=len(peers),
            peers=peers,
            members=record.members,
        )
        return reply.model_dump(mode="json")

    async def handle_configure(self, body: bytes) -> dict[str, Any]:
        """Set who may join; every replica closes (4003) the connections of users no longer listed.

        `closed` counts from the write itself: the connections the store held just before it
        (on every replica, read from the bucket, not from a view that may already have seen some
        of them leave) whose user the record admitted before the write and does not after it."""
        request = parse_request(CONFIGURE_REQUEST, body)
        present = await self.hub.presence.scan_session(request.session_id)
        before, after = await self.store.configure(request.session_id, request.members)
        default = self.hub.open_by_default
        closed = sum(
            1 for p in present if before.admits(p.user_id, default) and not after.admits(p.user_id, default)
        )
        return ConfigureReply(members=after.members, closed=closed).model_dump(mode="json")

    async def _peers(self, session_id: str) -> list[Peer]:
        session = self.hub.sessions.get(session_id)
        if session is not None:
            return session.peers()
        members = await self.hub.presence.scan_session(session_id)
        return [Peer(user_id=m.user_id, connection_id=m.connection_id) for m in members]
