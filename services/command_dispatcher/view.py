"""What this replica knows of the partitions it owns: their unfinished commands and agents' sockets.

A partition's owner is its only writer, so it learns every change of its records from its own
writes (and from what a compare-and-set reads back when another replica wrote meanwhile); it reads
the store only when it takes a partition (`CommandStore.read_open`), and follows only the presence
records of its partitions' agents. The view may lag the store, never lead it: every decision taken
on it is written with a compare-and-set on the revision it saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from pydantic import ValidationError

from shared.broker.kv import Bucket, Entry, Following
from shared.protocol import subjects
from shared.protocol.agents import PRESENCE, AgentPresence
from shared.protocol.commands import TERMINAL

from .lifecycle import Link
from .records import Record

log = logging.getLogger(__name__)

PRESENCE_SYNC_TIMEOUT_S = 30.0


class Known(NamedTuple):
    """A record as this replica knows it, and the revision it is at (the next write's fence)."""

    record: Record
    revision: int


class Present(NamedTuple):
    """An agent's presence record, and its revision (the socket's epoch)."""

    presence: AgentPresence
    revision: int


class View:
    def __init__(
        self,
        agents: Bucket,
        on_record: Callable[[Record, int], None],
        on_link: Callable[[str], None],
    ) -> None:
        self.agents_bucket = agents
        self.on_record = on_record  # an unfinished record changed (and which revision it is at)
        self.on_link = on_link  # an agent's socket changed
        self.partitions: set[int] = set()  # those whose records and agents are kept here
        self.records: dict[str, Known] = {}  # unfinished commands, by id
        self.by_agent: dict[str, set[str]] = {}  # unfinished command ids, by agent
        self.presence: dict[str, Present] = {}
        self._following: dict[int, Following] = {}

    async def take(self, partition: int) -> None:
        """Start keeping `partition`: follow its agents' presence until what exists has been read."""
        self.partitions.add(partition)
        following = await self.agents_bucket.follow(
            subjects.agent_keys_of_partition("presence", partition), self._on_presence
        )
        self._following[partition] = following
        async with asyncio.timeout(PRESENCE_SYNC_TIMEOUT_S):
            await following.synced.wait()

    async def drop(self, partition: int) -> None:
        """Forget `partition`: another replica owns it now."""
        self.partitions.discard(partition)
        following = self._following.pop(partition, None)
        if following is not None:
            await following.stop()
        for agent in [a for a in self.presence if subjects.partition_of(a) == partition]:
            del self.presence[agent]
        for agent in [a for a in self.by_agent if subjects.partition_of(a) == partition]:
            for command_id in self.by_agent.pop(agent):
                self.records.pop(command_id, None)

    async def stop(self) -> None:
        for partition in list(self._following):
            await self.drop(partition)

    # --- commands ---

    def get(self, command_id: str) -> Known | None:
        return self.records.get(command_id)

    def unfinished(self, edge_agent_id: str) -> list[Record]:
        return [self.records[cid].record for cid in self.by_agent.get(edge_agent_id, ())]

    def count(self, edge_agent_id: str) -> int:
        return len(self.by_agent.get(edge_agent_id, ()))

    def learn(self, record: Record, revision: int) -> None:
        """A record of this replica's partitions at `revision` (written here, or read from the store)."""
        known = self.records.get(record.command_id)
        if known is not None and known.revision >= revision:
            return
        if record.state in TERMINAL:
            self.forget(record.command_id)
            return
        if subjects.partition_of(record.edge_agent_id) not in self.partitions:
            return  # a write that was on its way when the partition went to another replica
        self.records[record.command_id] = Known(record, revision)
        self.by_agent.setdefault(record.edge_agent_id, set()).add(record.command_id)
        self.on_record(record, revision)

    def forget(self, command_id: str) -> None:
        known = self.records.pop(command_id, None)
        if known is None:
            return
        agent = known.record.edge_agent_id
        ids = self.by_agent.get(agent)
        if ids is not None:
            ids.discard(command_id)
            if not ids:
                del self.by_agent[agent]

    # --- agents ---

    def link(self, edge_agent_id: str) -> Link | None:
        found = self.presence.get(edge_agent_id)
        if found is None:
            return None
        presence = found.presence
        if not presence.online or presence.connection_id is None:
            return None
        since = presence.connected_at.timestamp() if presence.connected_at else 0.0
        return Link(presence.connection_id, since, presence.gateway_id or "")

    def _on_presence(self, entry: Entry) -> None:
        edge_agent_id = entry.key.split(".", 2)[-1]
        if entry.value is None or subjects.partition_of(edge_agent_id) not in self.partitions:
            return
        known = self.presence.get(edge_agent_id)
        if known is not None and known.revision >= entry.revision:
            return
        try:
            presence = PRESENCE.validate_json(entry.value)
        except ValidationError:
            log.warning("unreadable agent record", extra={"key": entry.key})
            return
        before = self.link(edge_agent_id)
        self.presence[edge_agent_id] = Present(presence, entry.revision)
        if self.link(edge_agent_id) != before:
            self.on_link(edge_agent_id)

    def saw_presence(self, presence: AgentPresence, revision: int) -> None:
        """A presence record this replica wrote (marking an agent offline)."""
        key = subjects.agent_key("presence", presence.edge_agent_id)
        self._on_presence(Entry(key, presence.model_dump_json().encode(), revision))
