"""The edge path's JetStream streams and buckets, declared once and created idempotently.

Both the gateway and the dispatcher call `ensure` at start-up, with the same definitions, so
whichever starts first creates them. No stream captures a core request subject.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from shared import subjects
from shared.broker import ensure_kv, ensure_stream

# Records outlive the longest TTL (7 days) so a final state can still be read for a day after.
RECORD_RETENTION_S = 8 * 86400


@dataclass(frozen=True, slots=True)
class EdgeStore:
    commands: KeyValue
    agents: KeyValue


def timers_stream(replicas: int) -> StreamConfig:
    # One message per unfinished command (max one per subject); its redelivery is the timer and
    # its removal (ack or purge) is the command leaving the active set.
    return StreamConfig(
        name=subjects.TIMERS_STREAM,
        subjects=[subjects.TIMERS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )


def acks_stream(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=subjects.ACKS_STREAM,
        subjects=[subjects.ACKS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=RECORD_RETENTION_S,
        num_replicas=replicas,
    )


async def ensure(js: JetStreamContext, replicas: int) -> EdgeStore:
    await ensure_stream(js, timers_stream(replicas))
    await ensure_stream(js, acks_stream(replicas))
    commands = await ensure_kv(
        js,
        KeyValueConfig(
            bucket=subjects.COMMANDS_BUCKET,
            history=1,
            ttl=RECORD_RETENTION_S,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
    )
    agents = await ensure_kv(
        js,
        KeyValueConfig(bucket=subjects.AGENTS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas),
    )
    return EdgeStore(commands=commands, agents=agents)
