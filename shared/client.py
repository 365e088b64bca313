"""Typed clients of the internal NATS API for backend services: commands and MiniApp sessions.

client = CommandClient(nc)
async with client.lifecycle(command_id=cid) as events:   # subscribe first, then submit
    await client.submit("agent-1", CommandType.SEND_MESSAGE_NOW, {...}, command_id=cid)
    async for event in events:
        if event.state in TERMINAL:
            break
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared.broker.connection import REQUEST_TIMEOUT_S, request
from shared.protocol import subjects
from shared.protocol.agents import AgentInfo
from shared.protocol.commands import LIFECYCLE_EVENT, CommandRecord, LifecycleEvent
from shared.protocol.edge import CommandType, Priority
from shared.protocol.errors import InvalidRequest
from shared.protocol.miniapp import ConfigureReply, GetReply, Peer


@dataclass(frozen=True, slots=True)
class Submitted:
    command_id: UUID
    state: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class AgentCommands:
    commands: list[CommandRecord]  # in the order they would be delivered
    total: int  # how many unfinished commands the agent has


@dataclass(frozen=True, slots=True)
class Purged:
    cancelled: int  # queued or sent commands now cancelled
    left: int  # received or executing ones, left alone


class CommandClient:
    def __init__(self, nc: NATS, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def submit(
        self,
        edge_agent_id: str,
        command_type: CommandType | str,
        payload: dict[str, Any],
        *,
        command_id: UUID | str | None = None,
        priority: Priority | str = Priority.NORMAL,
        ttl_s: int | None = None,
    ) -> Submitted:
        """Submit a command; returns once it is durably stored. Raises the dispatcher's error."""
        body: dict[str, Any] = {
            "edge_agent_id": edge_agent_id,
            "command_type": str(command_type),
            "payload": payload,
            "priority": str(priority),
        }
        if command_id is not None:
            body["command_id"] = str(command_id)
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        reply = await request(self.nc, subjects.COMMANDS_SUBMIT, body, self.timeout_s)
        return Submitted(UUID(reply["command_id"]), reply["state"], bool(reply["duplicate"]))

    async def get(self, command_id: UUID | str) -> CommandRecord:
        reply = await request(self.nc, subjects.COMMANDS_GET, {"command_id": str(command_id)}, self.timeout_s)
        return CommandRecord.model_validate(reply)

    async def cancel(self, command_id: UUID | str) -> CommandRecord:
        reply = await request(
            self.nc, subjects.COMMANDS_CANCEL, {"command_id": str(command_id)}, self.timeout_s
        )
        return CommandRecord.model_validate(reply)

    async def agent(self, edge_agent_id: str) -> AgentInfo:
        reply = await request(self.nc, subjects.AGENTS_GET, {"edge_agent_id": edge_agent_id}, self.timeout_s)
        return AgentInfo.model_validate(reply)

    async def commands(self, edge_agent_id: str, limit: int = 100) -> AgentCommands:
        """The agent's unfinished commands, `immediate` first, then in submission order."""
        body = {"edge_agent_id": edge_agent_id, "limit": limit}
        reply = await request(self.nc, subjects.AGENTS_COMMANDS, body, self.timeout_s)
        return AgentCommands(
            [CommandRecord.model_validate(c) for c in reply["commands"]], int(reply["total"])
        )

    async def purge(self, edge_agent_id: str, reason: str | None = None) -> Purged:
        """Cancel the agent's `queued` and `sent` commands (error `purged: <reason>`)."""
        body: dict[str, Any] = {"edge_agent_id": edge_agent_id}
        if reason:
            body["reason"] = reason
        reply = await request(self.nc, subjects.AGENTS_PURGE, body, self.timeout_s)
        return Purged(int(reply["cancelled"]), int(reply["left"]))

    @contextlib.asynccontextmanager
    async def lifecycle(
        self,
        *,
        command_id: UUID | str | None = None,
        edge_agent_id: str | None = None,
        max_pending: int = 10_000,
    ) -> AsyncIterator[AsyncIterator[LifecycleEvent]]:
        """Lifecycle events of one command or one agent, from the moment this is entered."""
        if (command_id is None) == (edge_agent_id is None):
            raise InvalidRequest("give exactly one of command_id or edge_agent_id")
        if edge_agent_id is not None and not subjects.is_token(edge_agent_id):
            raise InvalidRequest("edge_agent_id is not a valid id")
        subject = (
            subjects.lifecycle_of_command(str(UUID(str(command_id))))
            if command_id is not None
            else subjects.lifecycle_of_agent(str(edge_agent_id))
        )
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=max_pending)

        async def on_event(msg: Msg) -> None:
            await queue.put(msg)

        sub = await self.nc.subscribe(subject, cb=on_event)
        await self.nc.flush()

        async def events() -> AsyncIterator[LifecycleEvent]:
            while True:
                msg = await queue.get()
                with contextlib.suppress(ValidationError):
                    yield LIFECYCLE_EVENT.validate_json(msg.data)

        try:
            yield events()
        finally:
            await sub.unsubscribe()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    state: dict[str, Any]
    version: int
    connection_count: int
    peers: list[Peer]
    members: list[str] | None


class SessionClient:
    """MiniApp sessions for backend services: state, server-sourced updates, and who may join."""

    def __init__(self, nc: NATS, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def get(self, session_id: str) -> SessionInfo:
        reply = GetReply.model_validate(
            await request(self.nc, subjects.MINIAPP_GET, {"session_id": session_id}, self.timeout_s)
        )
        return SessionInfo(reply.state, reply.version, reply.connection_count, reply.peers, reply.members)

    async def update(self, session_id: str, patch: dict[str, Any], base_version: int | None = None) -> int:
        """Apply a server-sourced JSON Merge Patch; returns the new version."""
        body: dict[str, Any] = {"session_id": session_id, "patch": patch}
        if base_version is not None:
            body["base_version"] = base_version
        reply = await request(self.nc, subjects.MINIAPP_STATE_UPDATE, body, self.timeout_s)
        return int(reply["version"])

    async def set_members(self, session_id: str, members: list[str] | None) -> ConfigureReply:
        """Only these users may join (None: every authenticated user); the others are closed (4003)."""
        body = {"session_id": session_id, "members": members}
        return ConfigureReply.model_validate(
            await request(self.nc, subjects.MINIAPP_CONFIGURE, body, self.timeout_s)
        )

    async def members(self, session_id: str) -> list[str] | None:
        return (await self.get(session_id)).members

    async def clear_members(self, session_id: str) -> ConfigureReply:
        """Open the session to every authenticated user."""
        return await self.set_members(session_id, None)
