"""Edge agent records and events: written by the edge gateway, read by the dispatcher.

The agents bucket holds three small records per agent, each written by one party, under
`subjects.agent_key` (`<kind>.<partition>.<id>`): `presence` (the gateway holding the socket;
fenced by `epoch`), `status` (last status frame) and `sync` (last `/edge/sync` poll).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter


class AgentPresence(BaseModel):
    """`presence`: the agent's live socket. Each new socket writes it without reading it first;
    the revision of that write is the socket's epoch, so a newer socket has a higher epoch and a
    gateway releasing an older one (a compare-and-set on its revision) cannot undo a newer claim."""

    edge_agent_id: str
    online: bool
    connection_id: str | None
    connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    gateway_id: str | None = None  # the replica holding the socket: deliveries go to its subject


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


def deliver_request(connection_id: str, frame: bytes = b"") -> bytes:
    """A dispatcher's message on `edge.deliver.<gateway_id>` to the gateway holding the agent's
    socket: the connection it is for, a newline, and the frame to write as it is. The gateway writes
    the frame without parsing it, and answers only when it could not. With no frame it is a probe,
    always answered: is that connection still there?"""
    return connection_id.encode() + b"\n" + frame


def parse_deliver_request(body: bytes) -> tuple[str, bytes]:
    """`(connection_id, frame)` of a deliver request."""
    connection_id, _, frame = body.partition(b"\n")
    return connection_id.decode(errors="replace"), frame


class AgentInfo(BaseModel):
    """The reply of `edge.agents.get`."""

    edge_agent_id: str
    online: bool
    connected_at: str | None
    last_seen: str | None
    last_status: dict[str, Any] | None
    last_command_id: str | None = None
    queued: int
