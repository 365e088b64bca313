"""The internal NATS API (DESIGN section 5): server-sourced state updates and session reads.

Any replica answers (queue group); replies are `{"ok": true, ...}` or `{"ok": false, "error"}`.
"""

from __future__ import annotations

from typing import Any

from shared.broker.connection import Handler
from shared.protocol import subjects
from shared.protocol.commands import parse_request
from shared.protocol.miniapp import (
    GET_REQUEST,
    STATE_UPDATE_REQUEST,
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
        }

    async def handle_state_update(self, body: bytes) -> dict[str, Any]:
        """Apply a server-sourced merge patch; reply with the new version."""
        request = parse_request(STATE_UPDATE_REQUEST, body)
        session = self.hub.sessions.get(request.session_id)
        record = await self.store.apply(
            request.session_id,
            request.patch,
            request.base_version,
            Source.SERVER,
            cached=session.cached() if session is not None else None,
        )
        return StateUpdateReply(version=record.version).model_dump()

    async def handle_get(self, body: bytes) -> dict[str, Any]:
        """The session's state, version and who is connected, across every replica."""
        request = parse_request(GET_REQUEST, body)
        record, _ = await self.store.load(request.session_id)
        session = self.hub.sessions.get(request.session_id)
        if session is not None:
            peers = session.peers()
        else:
            members = await self.hub.presence.scan_session(request.session_id)
            peers = [Peer(user_id=m.user_id, connection_id=m.connection_id) for m in members]
        reply = GetReply(state=record.state, version=record.version, connection_count=len(peers), peers=peers)
        return reply.model_dump(mode="json")
