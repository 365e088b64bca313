"""JetStream KV buckets: reads, compare-and-set writes (with a per-message TTL), scans, following
every change of a set of keys, and the one compare-and-set loop every service uses.

Writes and reads go to the bucket's stream directly: nats-py's `KeyValue.update` takes no TTL and
`KeyValue.get` mistakes a TTL delete marker for a value; `follow` skips nats-py's watcher objects,
which cost more per entry than a whole record decode on the dispatcher's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, TypeAdapter

from shared.broker.connection import patiently
from shared.protocol import subjects
from shared.protocol.errors import Unavailable

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
WRONG_LAST_SEQUENCE = (10071, 10164)
CAS_ATTEMPTS = 20


class WrongRevision(Exception):
    """Someone else wrote the key since the revision we read."""


@dataclass(frozen=True, slots=True)
class Read:
    value: bytes | None  # None: never written, deleted, or expired
    revision: int  # 0 when the key was never written


def is_removal(operation: str | None) -> bool:
    return operation in ("DEL", "PURGE")


class Codec(Protocol[T]):
    """How a bucket's values are read and written."""

    def decode(self, data: bytes) -> T: ...
    def encode(self, value: T) -> bytes: ...


class ModelCodec(Generic[M]):
    """Values that are pydantic models."""

    def __init__(self, adapter: TypeAdapter[M]) -> None:
        self.adapter = adapter

    def decode(self, data: bytes) -> M:
        return self.adapter.validate_json(data)

    def encode(self, value: M) -> bytes:
        return value.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class Entry:
    """One change of a followed key."""

    key: str
    value: bytes | None  # None: deleted, purged or expired
    revision: int


def stream_position(reply: str) -> tuple[int, int]:
    """`(stream sequence, messages still pending)` of a JetStream delivery, from its reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[10])


class Bucket:
    def __init__(self, js: JetStreamContext, kv: KeyValue, name: str, direct: bool = False) -> None:
        self.js = js
        self.kv = kv
        self.name = name
        self.stream = f"KV_{name}"
        self.direct = direct  # the bucket allows direct gets (any replica may answer a read)

    async def read(self, key: str, fresh: bool = False) -> Read:
        """The key's latest value; `fresh` asks the stream leader, never a lagging copy."""
        try:
            msg = await self.js.get_msg(
                self.stream, subject=subjects.kv_subject(self.name, key), direct=self.direct and not fresh
            )
        except nats.js.errors.NotFoundError:
            return Read(None, 0)
        headers = msg.headers or {}
        revision = msg.seq or 0
        if is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers:
            return Read(None, revision)
        return Read(msg.data or b"", revision)

    async def get(self, key: str, adapter: TypeAdapter[M], fresh: bool = False) -> tuple[M, int] | None:
        """The value under `key` parsed by `adapter`, with its revision; None when absent."""
        read = await self.read(key, fresh)
        if read.value is None:
            return None
        return adapter.validate_json(read.value), read.revision

    async def write(self, key: str, value: bytes, last: int, ttl_s: int | None = None) -> int:
        """Write `value` if the key's latest revision is still `last` (0: absent); the new revision."""
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        try:
            ack = await self.js.publish(
                subjects.kv_subject(self.name, key), value, headers=headers, msg_ttl=ttl_s
            )
        except nats.js.errors.APIError as err:
            if err.err_code in WRONG_LAST_SEQUENCE:
                raise WrongRevision(key) from None
            raise
        return int(ack.seq)

    async def put(self, key: str, value: bytes) -> int:
        """Write `value` whatever is there."""
        return await self.kv.put(key, value)

    async def delete(self, key: str) -> None:
        await self.kv.delete(key)

    async def scan(self, pattern: str) -> dict[str, tuple[bytes, int]]:
        """The live keys matching `pattern` with their value and revision, read once."""
        found: dict[str, tuple[bytes, int]] = {}
        watcher = await self.kv.watch(pattern, ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the watcher's "caught up" marker
                    break
                found[entry.key] = (entry.value or b"", entry.revision or 0)
        finally:
            await stop_watcher(watcher)
        return found

    async def follow(self, pattern: str, on_entry: Callable[[Entry], None]) -> Following:
        """Hand `on_entry` the latest entry of every key matching `pattern`, then every change.

        `Following.synced` is set once the entries that existed at the start have all been handed
        over. The ordered consumer behind it resumes where it was after a reconnect.
        """
        prefix = f"$KV.{self.name}."
        following = Following()

        async def on_msg(msg: Msg) -> None:
            revision, pending = stream_position(msg.reply)
            headers = msg.headers or {}
            removed = is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers
            on_entry(Entry(msg.subject[len(prefix) :], None if removed else msg.data, revision))
            if pending == 0:
                following.synced.set()

        following.sub = await patiently(
            lambda: self.js.subscribe(
                subjects.kv_subject(self.name, pattern),
                stream=self.stream,
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ),
            f"following {self.name}",
        )
        info = await patiently(following.sub.consumer_info, f"following {self.name}")
        if info.num_pending == 0 and following.sub.delivered == 0:
            following.synced.set()
        return following


class Following:
    """A `Bucket.follow` in progress."""

    def __init__(self) -> None:
        self.synced = asyncio.Event()
        self.sub: Subscription | None = None

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


Change = Callable[[T | None], T | None]


async def compare_and_set(
    bucket: Bucket,
    key: str,
    codec: Codec[T],
    change: Change[T],
    *,
    cached: tuple[T, int] | None = None,
    ttl_s: int | None = None,
    on_conflict: Callable[[], None] | None = None,
) -> tuple[T, T | None, int] | None:
    """Apply `change` to the value under `key` by compare-and-set; `(new, old, revision)`, or None
    when `change` decided there is nothing to write.

    `change` sees None for an absent key. A lost race re-reads and decides again. A decision made
    on `cached` (a copy that may lag the store, never lead it) is only final on a fresh read: if
    `change` raises on the cached copy, it is asked again on the stored one.
    """
    current: T | None
    for _ in range(CAS_ATTEMPTS):
        from_cache = cached is not None
        if cached is not None:
            current, revision = cached
            cached = None
        else:
            # A removed key keeps the revision of its delete marker: the next write must name it.
            read = await bucket.read(key)
            current = codec.decode(read.value) if read.value is not None else None
            revision = read.revision
        try:
            new = change(current)
        except Exception:
            if from_cache:
                continue
            raise
        if new is None:
            return None
        try:
            written = await bucket.write(key, codec.encode(new), revision, ttl_s)
        except WrongRevision:
            if on_conflict is not None:
                on_conflict()
            continue
        return new, current, written
    raise Unavailable(f"{bucket.name} key too contended, try again")


async def stop_watcher(watcher: Any) -> None:
    """Stop a KV watcher, whatever state its connection is in."""
    with contextlib.suppress(Exception):
        await watcher.stop()
