"""The internal NATS API (DESIGN section 5): server-sourced state updates and session reads.

Any replica answers (queue group); replies are `{"ok": true, ...}` or `{"ok": false, "error"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.miniapp_gateway.hub import Hub
from services.miniapp_gateway.state import StateStore
from shared import subjects
from shared.broker import replier
from shared.errors import InvalidRequest
from shared.miniapp_protocol import (
    GET_REQUEST,
    STATE_UPDATE_REQUEST,
    GetReply,
    Peer,
    Source,
    StateUpdateReply,
)
from shared.workers import KeyedWorkers

log = logging.getLogger(__name__)

CONCURRENT_REQUESTS = 64


def _invalid(err: ValidationError) -> InvalidRequest:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    return InvalidRequest(f"{where}: {first['msg']}")


class InternalApi:
    def __init__(self, store: StateStore, hub: Hub) -> None:
        self.store = store
        self.hub = hub

    async def state_update(self, body: bytes) -> dict[str, Any]:
        """Apply a server-sourced merge patch; reply with the new version."""
        try:
            request = STATE_UPDATE_REQUEST.validate_json(body)
        except ValidationError as err:
            raise _invalid(err) from None
        session = self.hub.sessions.get(request.session_id)
        record = await self.store.apply(
            request.session_id,
            request.patch,
            request.base_version,
            Source.SERVER,
            cached=session.cached() if session is not None else None,
        )
        return StateUpdateReply(version=record.version).model_dump()

    async def get(self, body: bytes) -> dict[str, Any]:
        """The session's state, version and who is connected, across every replica."""
        try:
            request = GET_REQUEST.validate_json(body)
        except ValidationError as err:
            raise _invalid(err) from None
        record, _ = await self.store.load(request.session_id)
        session = self.hub.sessions.get(request.session_id)
        if session is not None:
            peers = session.peers()
        else:
            members = await self.hub.presence.scan_session(request.session_id)
            peers = [Peer(user_id=m.user_id, connection_id=m.connection_id) for m in members]
        reply = GetReply(state=record.state, version=record.version, connection_count=len(peers), peers=peers)
        return reply.model_dump(mode="json")


async def subscribe_internal_api(nc: NATS, store: StateStore, hub: Hub) -> list[Subscription]:
    api = InternalApi(store, hub)
    pool = KeyedWorkers(CONCURRENT_REQUESTS)
    return [
        await nc.subscribe(
            subjects.MINIAPP_STATE_UPDATE,
            queue=subjects.MINIAPP_QUEUE_GROUP,
            cb=replier(api.state_update, log, pool),
        ),
        await nc.subscribe(
            subjects.MINIAPP_GET, queue=subjects.MINIAPP_QUEUE_GROUP, cb=replier(api.get, log, pool)
        ),
    ]
