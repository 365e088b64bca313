"""This replica's view of the command records and the agents, kept current by following the buckets.

Every dispatcher replica follows both buckets: it holds every unfinished command (indexed by
agent, so `queue_full`, `queued` and a connect's pull need no JetStream call), every agent's
socket (so a delivery needs no presence read), and the agents' last status and sync. Writes of its
own are learnt at once; everyone else's arrive within milliseconds. The view may lag the store,
never lead it: every decision taken on it is written with a compare-and-set on the revision it saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pydantic import ValidationError

from shared.broker.kv import Bucket, Entry, Following
from shared.protocol.agents import PRESENCE, STATUS, SYNC, AgentPresence, AgentStatus, AgentSync
from shared.protocol.commands import TERMINAL

from .lifecycle import Link
from .records import Record, RecordCodec

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 60.0
FINISHED_REMEMBERED = 16_384


class View:
    def __init__(
        self,
        commands: Bucket,
        agents: Bucket,
        on_record: Callable[[Record, int], None],
        on_link: Callable[[str], None],
    ) -> None:
        self.commands_bucket = commands
        self.agents_bucket = agents
        self.on_record = on_record  # an unfinished record changed (and which revision it is at)
        self.on_link = on_link  # an agent's socket changed
        self.records: dict[str, tuple[Record, int]] = {}  # unfinished commands, by id
        # The last revision of commands that reached a final state here, oldest first (bounded): so
        # the bucket's echo of a final write is recognised instead of decoded all over again.
        self.finished: dict[str, int] = {}
        # This replica's writes on their way, as stored: the bucket's echo of one often arrives
        # before the write's own ack, and is then taken from here instead of decoded.
        self.writing: dict[str, tuple[bytes, Record]] = {}
        self.by_agent: dict[str, set[str]] = {}  # unfinished command ids, by agent
        self.presence: dict[str, tuple[AgentPresence, int]] = {}
        self.status: dict[str, AgentStatus] = {}
        self.sync: dict[str, AgentSync] = {}
        self._following: list[Following] = []

    async def start(self) -> None:
        """Follow both buckets; return once what they held at the start has been read."""
        self._following = [
            await self.commands_bucket.follow(">", self._on_command),
            await self.agents_bucket.follow(">", self._on_agent),
        ]
        async with asyncio.timeout(SYNC_TIMEOUT_S):
            for following in self._following:
                await following.synced.wait()

    async def stop(self) -> None:
        for following in self._following:
            await following.stop()

    # --- commands ---

    def get(self, command_id: str) -> tuple[Record, int] | None:
        return self.records.get(command_id)

    def unfinished(self, edge_agent_id: str) -> list[Record]:
        return [self.records[cid][0] for cid in self.by_agent.get(edge_agent_id, ())]

    def count(self, edge_agent_id: str) -> int:
        return len(self.by_agent.get(edge_agent_id, ()))

    def learn(self, record: Record, revision: int) -> None:
        """A record at `revision` (this replica's write, or one seen in the bucket)."""
        known = self.records.get(record.command_id)
        if known is not None and known[1] >= revision:
            return
        if record.state in TERMINAL:
            self._forget(record, revision)
            return
        self.records[record.command_id] = (record, revision)
        self.by_agent.setdefault(record.edge_agent_id, set()).add(record.command_id)
        self.on_record(record, revision)

    def _forget(self, record: Record, revision: int) -> None:
        if len(self.finished) >= FINISHED_REMEMBERED:
            del self.finished[next(iter(self.finished))]
        self.finished[record.command_id] = revision
        if self.records.pop(record.command_id, None) is None:
            return
        ids = self.by_agent.get(record.edge_agent_id)
        if ids is not None:
            ids.discard(record.command_id)
            if not ids:
                del self.by_agent[record.edge_agent_id]

    def _on_command(self, entry: Entry) -> None:
        known = self.records.get(entry.key)
        if known is not None and known[1] >= entry.revision:
            return  # this replica wrote it, and learnt it already
        if self.finished.get(entry.key, 0) >= entry.revision:
            return  # its final write, learnt already
        if entry.value is None:  # gone with the bucket's retention
            if known is not None:
                self._forget(known[0], entry.revision)
            return
        mine = self.writing.get(entry.key)
        if mine is not None and mine[0] == entry.value:
            self.learn(mine[1], entry.revision)
            return
        try:
            record = RecordCodec.decode(entry.value)
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable command record", extra={"command_id": entry.key})
            return
        self.learn(record, entry.revision)

    # --- agents ---

    def link(self, edge_agent_id: str) -> Link | None:
        found = self.presence.get(edge_agent_id)
        if found is None:
            return None
        presence = found[0]
        if not presence.online or presence.connection_id is None:
            return None
        since = presence.connected_at.timestamp() if presence.connected_at else 0.0
        return Link(presence.connection_id, since, presence.gateway_id or "")

    def _on_agent(self, entry: Entry) -> None:
        kind, _, edge_agent_id = entry.key.partition(".")
        if entry.value is None:
            return
        try:
            if kind == "presence":
                known = self.presence.get(edge_agent_id)
                if known is not None and known[1] >= entry.revision:
                    return
                before = self.link(edge_agent_id)
                self.presence[edge_agent_id] = (PRESENCE.validate_json(entry.value), entry.revision)
                if self.link(edge_agent_id) != before:
                    self.on_link(edge_agent_id)
            elif kind == "status":
                self.status[edge_agent_id] = STATUS.validate_json(entry.value)
            elif kind == "sync":
                self.sync[edge_agent_id] = SYNC.validate_json(entry.value)
        except ValidationError:
            log.warning("unreadable agent record", extra={"key": entry.key})

    def saw_presence(self, presence: AgentPresence, revision: int) -> None:
        """A presence record this replica wrote (marking an agent offline)."""
        key = f"presence.{presence.edge_agent_id}"
        self._on_agent(Entry(key, presence.model_dump_json().encode(), revision))
