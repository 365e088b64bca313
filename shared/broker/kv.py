"""JetStream KV buckets: reads, compare-and-set writes (with a per-message TTL), scans, following
every change of a set of keys, and the one compare-and-set loop every service uses.

Writes and reads go to the bucket's stream directly: nats-py's `KeyValue.update` takes no TTL and
`KeyValue.get` mistakes a TTL delete marker for a value; `follow` skips nats-py's watcher objects,
which cost more per entry than a whole record decode on the dispatcher's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, TypeAdapter

from shared.broker.connection import NATS_ERRORS, off_reconnect, on_reconnect, patiently
from shared.protocol import subjects
from shared.protocol.errors import Unavailable

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
WRONG_LAST_SEQUENCE = (10071, 10164)
CAS_ATTEMPTS = 20
# Keys per batched direct get (`Bucket.read_many`); nats-server answers at most 1,024 subjects at once.
READ_MANY_BATCH = 512
EOB = "204"  # the status of the message that ends a batched direct get
NO_RESULTS = "404"  # a batched direct get none of whose keys exists


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


# One try at making a follow's consumer: the JetStream API otherwise waits 5 s on a leader gone.
FOLLOW_ATTEMPT_S = 2.0


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

    async def read_many(self, keys: list[str], timeout_s: float = 5.0) -> dict[str, Read]:
        """The latest value of each key that has one, read in batches that any replica of the
        bucket may answer (direct gets, which the bucket must allow): a value may lag the leader's
        by a moment, and a key missing from the answer may have been written just now."""
        nc = self.js._nc  # nats-py's JetStream API has no batched get: it is a plain request
        found: dict[str, Read] = {}
        prefix = f"$KV.{self.name}."
        for start in range(0, len(keys), READ_MANY_BATCH):
            chunk = [prefix + key for key in keys[start : start + READ_MANY_BATCH]]
            done = asyncio.get_running_loop().create_future()

            async def on_msg(msg: Msg, done: asyncio.Future[None] = done) -> None:
                headers = msg.headers or {}
                status = headers.get(api.Header.STATUS.value)
                if status is not None:
                    if done.done():
                        pass
                    elif status in (EOB, NO_RESULTS):  # the end of a batch; or none of it exists
                        done.set_result(None)
                    else:
                        done.set_exception(nats.js.errors.APIError(description=f"direct get: {status}"))
                    return
                subject = headers.get("Nats-Subject", "")
                removed = is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers
                found[subject[len(prefix) :]] = Read(
                    None if removed else msg.data, int(headers.get("Nats-Sequence", 0))
                )

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=on_msg)
            try:
                await nc.publish(
                    f"$JS.API.DIRECT.GET.{self.stream}",
                    orjson.dumps({"multi_last": chunk, "batch": len(chunk)}),
                    reply=inbox,
                )
                async with asyncio.timeout(timeout_s):
                    await done
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        return {key: read for key, read in found.items() if read.value is not None}

    async def history(self, key: str) -> list[bytes]:
        """The values the bucket still keeps for `key`, oldest first (deletes left out)."""
        try:
            entries = await self.kv.history(key)
        except nats.js.errors.NoKeysError:
            return []
        return [e.value or b"" for e in entries if not is_removal(e.operation)]

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
        over. After a reconnect the ordered consumer behind it is made afresh from the next revision:
        the one it had may have died with its NATS node, and nats-py notices that only after many
        missed heartbeats (some 20 s), while a replica's lease expiry must be seen within seconds.
        """
        prefix = f"$KV.{self.name}."
        following = Following(self.js._nc)

        async def on_msg(msg: Msg) -> None:
            revision, pending = stream_position(msg.reply)
            headers = msg.headers or {}
            removed = is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers
            following.revision = max(following.revision, revision)
            on_entry(Entry(msg.subject[len(prefix) :], None if removed else msg.data, revision))
            if pending == 0:
                following.synced.set()

        async def subscribe(after: int) -> JetStreamContext.PushSubscription:
            return await patiently(
                lambda: self.js.subscribe(
                    subjects.kv_subject(self.name, pattern),
                    stream=self.stream,
                    cb=on_msg,
                    ordered_consumer=True,
                    config=api.ConsumerConfig(
                        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
                    )
                    if after
                    else None,
                    deliver_policy=None if after else api.DeliverPolicy.LAST_PER_SUBJECT,
                ),
                f"following {self.name}",
                # Those who follow wait on it: while the store elects a leader, try often.
                attempt_s=FOLLOW_ATTEMPT_S,
                max_delay_s=1.0,
            )

        async def resubscribe() -> None:
            if following.sub is None:
                return
            old, following.sub = following.sub, None
            with contextlib.suppress(*NATS_ERRORS):
                await old.unsubscribe()
            following.sub = await subscribe(following.revision)

        following.sub = await subscribe(0)
        info = await patiently(following.sub.consumer_info, f"following {self.name}")
        # Synced at once only when the server has delivered nothing at all: a message already on
        # its way to `on_msg` (num_pending is 0 by then) sets it itself, being the last one.
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            following.synced.set()
        following.on_reconnect(resubscribe)
        return following

    async def changes(self, pattern: str) -> Changes:
        """`follow` as an async iterator: the latest entry of every matching key, None once those
        are all handed over, then every change. Like nats-py's `watch`, but it survives its NATS
        node (after a reconnect it goes on from the next revision instead of stalling), and a
        caller that knows it is behind can `resume` it at once."""
        entries: asyncio.Queue[Entry | None] = asyncio.Queue()
        following = await self.follow(pattern, entries.put_nowait)
        return Changes(following, entries)


class Changes:
    """A `Bucket.changes` in progress; `stop` it when done."""

    def __init__(self, following: Following, entries: asyncio.Queue[Entry | None]) -> None:
        self._following = following
        self._entries = entries

        async def caught_up() -> None:
            await following.synced.wait()
            entries.put_nowait(None)

        self._marker = asyncio.ensure_future(caught_up())

    def __aiter__(self) -> Changes:
        return self

    async def __anext__(self) -> Entry | None:
        return await self._entries.get()

    async def resume(self) -> None:
        """Make the consumer behind it afresh from the next revision: the one it has may be gone
        with its node, which nats-py notices only after many missed heartbeats."""
        await self._following.resume()

    async def stop(self) -> None:
        self._marker.cancel()
        await self._following.stop()


class Following:
    """A `Bucket.follow` in progress."""

    def __init__(self, nc: NATS) -> None:
        self.synced = asyncio.Event()
        self.sub: Subscription | None = None
        self.revision = 0  # the last one handed over
        self._nc = nc
        self._resubscribe: Callable[[], Awaitable[None]] | None = None

    def on_reconnect(self, resubscribe: Callable[[], Awaitable[None]]) -> None:
        self._resubscribe = resubscribe
        on_reconnect(self._nc, resubscribe)

    async def resume(self) -> None:
        if self._resubscribe is not None:
            await self._resubscribe()

    async def stop(self) -> None:
        if self._resubscribe is not None:
            off_reconnect(self._nc, self._resubscribe)
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


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
    on_read: Callable[[T | None, int], None] | None = None,
) -> tuple[T, T | None, int] | None:
    """Apply `change` to the value under `key` by compare-and-set; `(new, old, revision)`, or None
    when `change` decided there is nothing to write.

    `change` sees None for an absent key. A lost race re-reads and decides again. A decision made
    on `cached` (a copy that may lag the store, never lead it) is only final on a fresh read: if
    `change` raises on the cached copy, it is asked again on the stored one. `on_read` is told
    each value read from the store (and its revision), so a caller's copy catches up.
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
            if on_read is not None:
                on_read(current, revision)
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
