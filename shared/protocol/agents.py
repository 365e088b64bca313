"""Edge agent records and events: written by the edge gateway, read by the dispatcher.

The agents bucket holds three small records per agent, each written by one party:
`presence.<id>` (the gateway holding the socket; fenced by `epoch`), `status.<id>` (last status
frame) and `sync.<id>` (last `/edge/sync` poll).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from shared.protocol.edge import CommandData


class AgentPresence(BaseModel):
    edge_agent_id: str
    online: bool
    connection_id: str | None
    # Grows by one with every new socket; a gateway whose socket has a lower epoch is stale.
    epoch: int
    connected_at: datetime | None = None
    disconnected_at: datetime | None = None


class AgentStatus(BaseModel):
    status: dict[str, Any]
    at: datetime


class AgentSync(BaseModel):
    last_command_id: str | None
    at: datetime


PRESENCE = TypeAdapter(AgentPresence)
STATUS = TypeAdapter(AgentStatus)
SYNC = TypeAdapter(AgentSync)


class PresenceEvent(BaseModel):
    """Published on `edge.presence.<id>`."""

    edge_agent_id: str
    event: Literal["connected", "disconnected"]
    connection_id: str
    epoch: int
    at: str


PRESENCE_EVENT = TypeAdapter(PresenceEvent)


class DeliverRequest(BaseModel):
    """Dispatcher -> the gateway holding the socket, on `edge.deliver.<id>`.

    Without `command` it only asks whether that connection is still there.
    """

    connection_id: str
    command: CommandData | None = None


DELIVER_REQUEST = TypeAdapter(DeliverRequest)


class AgentInfo(BaseModel):
    """The reply of `edge.agents.get`."""

    edge_agent_id: str
    online: bool
    connected_at: str | None
    last_seen: str | None
    last_status: dict[str, Any] | None
    last_command_id: str | None = None
    queued: int
