"""Every NATS subject, stream, KV bucket and queue group of the backend, in one place.

Any id a client sends is checked with `is_token` before it is put into a subject.
"""

from __future__ import annotations

import re
import zlib

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_token(value: object) -> bool:
    """True when `value` may stand as one NATS subject token (no dots, wildcards or spaces)."""
    return isinstance(value, str) and TOKEN_RE.fullmatch(value) is not None


# --- Edge: internal API of the command dispatcher (core NATS request/reply) ---
COMMANDS_SUBMIT = "edge.commands.submit"
COMMANDS_GET = "edge.commands.get"
COMMANDS_CANCEL = "edge.commands.cancel"
AGENTS_GET = "edge.agents.get"
AGENTS_COMMANDS = "edge.agents.commands"  # an agent's unfinished commands, in delivery order
AGENTS_PURGE = "edge.agents.purge"  # cancel an agent's queued and sent commands
# Gateway -> dispatcher: hand over the agent's pending commands (socket connect or /edge/sync).
AGENTS_PULL = "edge.agents.pull"
# Gateway -> dispatcher: one command_ack from an agent.
ACKS_SUBMIT = "edge.acks.submit"
DISPATCHER_QUEUE_GROUP = "command_dispatcher"

# --- Edge: partitions of the command path ---
# Each agent's commands belong to one of a fixed number of partitions (a hash of its id); each
# partition is owned by one live dispatcher replica at a time, which alone handles its submits,
# deliveries, acks and timers. Changing the number re-homes every agent: it is fixed for good.
PARTITIONS = 64


def partition_of(edge_agent_id: str) -> int:
    return zlib.crc32(edge_agent_id.encode()) % PARTITIONS


def owner_of(partition: int, live: set[str] | frozenset[str]) -> str | None:
    """The live dispatcher replica that owns `partition`: rendezvous hashing over the replica ids,
    so every party that knows the live set (dispatchers, gateways) computes the same owner."""
    key = str(partition).encode()
    return max(live, key=lambda replica: zlib.crc32(key, zlib.crc32(replica.encode())), default=None)


# A replica that let partitions go says so here, so their new owner need not wait out a lease TTL.
DISPATCHER_HANDOFF = "edge.dispatchers.handoff"

# Requests for one partition, answered by its owner only (`op` one of these).
PARTITION_OPS = ("submit", "cancel", "agent", "commands", "purge", "pull", "acks")
PARTITION_ALL = "edge.partition.*.*"


def partition_api(partition: int | str, op: str) -> str:
    return f"edge.partition.{partition}.{op}"


# --- Edge: events ---
LIFECYCLE_ALL = "edge.lifecycle.>"
PRESENCE_ALL = "edge.presence.*"


def lifecycle(edge_agent_id: str, command_id: str) -> str:
    return f"edge.lifecycle.{edge_agent_id}.{command_id}"


def lifecycle_of_agent(edge_agent_id: str) -> str:
    return f"edge.lifecycle.{edge_agent_id}.*"


def lifecycle_of_command(command_id: str) -> str:
    return f"edge.lifecycle.*.{command_id}"


def presence(edge_agent_id: str) -> str:
    return f"edge.presence.{edge_agent_id}"


def status(edge_agent_id: str) -> str:
    return f"edge.status.{edge_agent_id}"


def events(edge_agent_id: str) -> str:
    return f"edge.events.{edge_agent_id}"


def deliver(gateway_id: str) -> str:
    """Core request subject of one edge gateway replica: deliveries to the sockets it holds. One
    subscription per replica, not per socket (a nats-py subscription costs about 5 KB and a task)."""
    return f"edge.deliver.{gateway_id}"


# --- Edge: JetStream ---
COMMANDS_BUCKET = "EDGE_COMMANDS"  # command records, keyed by command_id
AGENTS_BUCKET = "EDGE_AGENTS"  # presence/status/sync records, keyed by `agent_key`
# Dispatcher replica leases "d.<replica_id>" (per-message TTL): who runs which agent's timers.
DISPATCHERS_BUCKET = "EDGE_DISPATCHERS"
DISPATCHER_LEASE_PREFIX = "d"
ACKS_STREAM = "EDGE_ACKS"  # acks the gateway could not hand over directly
ACKS_CONSUMER = "command_dispatcher_acks"
ACKS_ALL = "edge.acked.*"
ACKS_STORED = "edge.acked.batch"  # a batch no dispatcher could take, stored for one to apply
# The unfinished commands of each partition, one empty message "edge.open.<partition>.<command_id>"
# each, purged when the command finishes: a partition's new owner reads only these, never the
# finished records the commands bucket keeps for days.
OPEN_STREAM = "EDGE_OPEN"
OPEN_ALL = "edge.open.>"


def open_entry(partition: int, command_id: str) -> str:
    return f"edge.open.{partition}.{command_id}"


def open_of_partition(partition: int) -> str:
    return f"edge.open.{partition}.*"


def agent_key(kind: str, edge_agent_id: str) -> str:
    """`<kind>.<partition>.<edge_agent_id>`: a partition's owner follows only its own agents."""
    return f"{kind}.{partition_of(edge_agent_id)}.{edge_agent_id}"


def agent_keys_of_partition(kind: str, partition: int) -> str:
    return f"{kind}.{partition}.*"


# --- MiniApp ---
MINIAPP_STATE_UPDATE = "miniapp.sessions.state_update"
MINIAPP_GET = "miniapp.sessions.get"
MINIAPP_CONFIGURE = "miniapp.sessions.configure"
MINIAPP_QUEUE_GROUP = "miniapp_gateway"


def miniapp_presence(session_id: str) -> str:
    return f"miniapp.presence.{session_id}"


def miniapp_actions(session_id: str) -> str:
    return f"miniapp.actions.{session_id}"


def miniapp_typing(session_id: str) -> str:
    """Gateway-to-gateway relay of `typing` frames (core NATS, fire and forget)."""
    return f"miniapp.typing.{session_id}"


# --- MiniApp: JetStream ---
# Session records keyed by session_id; every accepted update is a compare-and-set on the revision.
MINIAPP_SESSIONS_BUCKET = "MINIAPP_SESSIONS"
# Presence: replica leases "r.<replica_id>" (per-message TTL, renewed by heartbeats) and
# connection entries "c.<replica_id>.<session_id>.<connection_id>", alive while their lease is.
MINIAPP_PRESENCE_BUCKET = "MINIAPP_PRESENCE"
MINIAPP_REAPER_CONSUMER = "miniapp_gateway_reaper"
MINIAPP_LEASE_PREFIX = "r"


def miniapp_connection_key(replica_id: str, session_id: str, connection_id: str) -> str:
    return f"c.{replica_id}.{session_id}.{connection_id}"


def parse_connection_key(key: str) -> tuple[str, str, str] | None:
    """`(replica_id, session_id, connection_id)` of a connection entry's key."""
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "c":
        return None
    return parts[1], parts[2], parts[3]


def miniapp_connections_of_session(session_id: str) -> str:
    return f"c.*.{session_id}.*"


def miniapp_connections_of_replica(replica_id: str) -> str:
    return f"c.{replica_id}.*.*"


def kv_subject(bucket: str, key: str) -> str:
    """The stream subject under which a KV bucket stores `key` (for raw publishes and filters)."""
    return f"$KV.{bucket}.{key}"
