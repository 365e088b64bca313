"""Every JetStream stream and KV bucket of the backend, declared once and created idempotently.

Each service calls its `ensure_*` at start-up with the same definitions, so whichever starts first
creates them. No stream captures a core request subject (that would break no-responders detection).
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from shared.broker.connection import patiently
from shared.broker.kv import Bucket
from shared.protocol import subjects

# Records outlive the longest TTL (7 days) so a final state can still be read for a day after.
RECORD_RETENTION_S = 8 * 86400
# Consumers a MiniApp bucket's stream may have: each replica watches each session it has sockets
# in (one consumer on each bucket), so this bounds sessions x replicas.
MINIAPP_MAX_CONSUMERS = 100_000
# Server-placed delete markers (expired leases) stay this long, so a replica that starts after every
# other one died still learns they are gone (the MiniApp gateway then reaps their connections).
MARKER_TTL_S = 24 * 3600


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config` (waiting for a broker that is not
    answering yet)."""

    async def ensure() -> None:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)

    await patiently(ensure, f"stream {config.name}")


async def read_subjects(nc: NATS, stream: str, pattern: str, timeout_s: float = 10.0) -> list[str]:
    """The subjects of the messages `stream` holds under `pattern`, listed by the server (a page of
    up to 100,000 per request) rather than delivered one message each."""
    found: list[str] = []
    while True:
        body = orjson.dumps({"subjects_filter": pattern, "offset": len(found)})
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", body, timeout=timeout_s)
        info = orjson.loads(reply.data)
        if "error" in info:
            raise nats.js.errors.APIError.from_error(info["error"])
        page = list((info.get("state") or {}).get("subjects") or {})
        found += page
        if not page or len(found) >= int(info.get("total") or 0):
            return found


async def purge_subject(nc: NATS, stream: str, subject: str) -> None:
    """Remove every message of `subject` from `stream`, leaving no marker; not waited for (a purge
    that is lost leaves a message its reader tidies up later)."""
    await nc.publish(f"$JS.API.STREAM.PURGE.{stream}", orjson.dumps({"filter": subject}))


async def ensure_bucket(
    js: JetStreamContext, config: KeyValueConfig, max_consumers: int = 0, leader_reads: bool = False
) -> Bucket:
    """Create the bucket, or bring an existing one's limits to `config` (waiting for a broker that
    is not answering yet).

    `max_consumers` sets how many consumers its stream may have: nats-server 2.15 allows 1,000 per
    stream unless the stream says otherwise, and a MiniApp gateway holds one per active session.
    `leader_reads`: single reads go to the stream leader even where direct gets are allowed (then
    only for `Bucket.read_many`).
    """
    return await patiently(
        lambda: _ensure_bucket(js, config, max_consumers, leader_reads), f"bucket {config.bucket}"
    )


async def _ensure_bucket(
    js: JetStreamContext, config: KeyValueConfig, max_consumers: int, leader_reads: bool
) -> Bucket:
    try:
        kv = await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        kv = await js.key_value(config.bucket)
    stream = (await js.stream_info(f"KV_{config.bucket}")).config
    wanted = {
        "max_msg_size": config.max_value_size or -1,
        "max_msgs_per_subject": config.history,
        "max_age": config.ttl or 0,
        "num_replicas": config.replicas,
        "allow_direct": bool(config.direct),
        **({"max_consumers": max_consumers} if max_consumers else {}),
    }
    if any((getattr(stream, k) or 0) != (v or 0) for k, v in wanted.items()):
        for k, v in wanted.items():
            setattr(stream, k, v)
        await js.update_stream(stream)
    return Bucket(js, kv, config.bucket, direct=bool(config.direct) and not leader_reads)


@dataclass(frozen=True, slots=True)
class EdgeStore:
    commands: Bucket
    agents: Bucket
    dispatchers: Bucket


def edge_streams(replicas: int) -> tuple[StreamConfig, ...]:
    return (
        # Acks a gateway could not hand to a dispatcher directly.
        StreamConfig(
            name=subjects.ACKS_STREAM,
            subjects=[subjects.ACKS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=RECORD_RETENTION_S,
            num_replicas=replicas,
        ),
        # The unfinished commands of each partition (subjects.OPEN_STREAM).
        StreamConfig(
            name=subjects.OPEN_STREAM,
            subjects=[subjects.OPEN_ALL],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_msgs_per_subject=1,
            max_age=RECORD_RETENTION_S,
            num_replicas=replicas,
        ),
    )


def edge_buckets(replicas: int) -> tuple[KeyValueConfig, KeyValueConfig, KeyValueConfig]:
    """The command records, the agent records, and the dispatcher replicas' leases."""
    return (
        KeyValueConfig(
            bucket=subjects.COMMANDS_BUCKET,
            history=1,
            ttl=RECORD_RETENTION_S,
            storage=StorageType.FILE,
            replicas=replicas,
            direct=True,  # a partition's new owner reads its unfinished records in batches
        ),
        KeyValueConfig(bucket=subjects.AGENTS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas),
        KeyValueConfig(
            bucket=subjects.DISPATCHERS_BUCKET,
            history=1,
            storage=StorageType.FILE,
            replicas=replicas,
            limit_marker_ttl=MARKER_TTL_S,
        ),
    )


async def ensure_edge(js: JetStreamContext, replicas: int) -> EdgeStore:
    """Everything of the edge path (the dispatcher's start)."""
    for config in edge_streams(replicas):
        await ensure_stream(js, config)
    commands, agents, dispatchers = edge_buckets(replicas)
    return EdgeStore(
        commands=await ensure_bucket(js, commands, leader_reads=True),
        agents=await ensure_bucket(js, agents),
        dispatchers=await ensure_bucket(js, dispatchers),
    )


async def ensure_edge_gateway(js: JetStreamContext, replicas: int) -> Bucket:
    """What an edge gateway writes (the agents bucket, the stored-acks stream), and nothing more:
    its NATS user may create only these."""
    for config in edge_streams(replicas):
        if config.name == subjects.ACKS_STREAM:
            await ensure_stream(js, config)
    return await ensure_bucket(js, edge_buckets(replicas)[1])


@dataclass(frozen=True, slots=True)
class MiniAppStore:
    sessions: Bucket
    presence: Bucket


async def ensure_miniapp(
    js: JetStreamContext, replicas: int, history: int, max_value_bytes: int
) -> MiniAppStore:
    sessions = await ensure_bucket(
        js,
        KeyValueConfig(
            bucket=subjects.MINIAPP_SESSIONS_BUCKET,
            history=history,
            max_value_size=max_value_bytes,
            storage=StorageType.FILE,
            replicas=replicas,
            direct=True,
            # No delete markers here: nothing watches a session without sockets, and nats-server
            # raises a first write's TTL to the marker TTL when history > 1.
        ),
        MINIAPP_MAX_CONSUMERS,
    )
    presence = await ensure_bucket(
        js,
        KeyValueConfig(
            bucket=subjects.MINIAPP_PRESENCE_BUCKET,
            history=1,
            storage=StorageType.FILE,
            replicas=replicas,
            direct=True,
            limit_marker_ttl=MARKER_TTL_S,
        ),
        MINIAPP_MAX_CONSUMERS,
    )
    return MiniAppStore(sessions=sessions, presence=presence)
