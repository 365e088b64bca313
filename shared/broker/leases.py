"""Replica leases: which replicas of a service are alive, from a KV bucket.

Each replica holds a key `<prefix>.<replica_id>` written with a per-message TTL and renewed by
compare-and-set every heartbeat. A replica that dies stops renewing; its key expires, the server
leaves a delete marker, and every replica following the prefix sees it gone at once. A replica
whose own lease expired (cut off from NATS for longer than the TTL) is fenced: its renewal finds
the revision changed, it says so (`on_fenced`) and starts over under a new replica id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from shared.broker.connection import NATS_ERRORS, patiently
from shared.broker.kv import Bucket, Entry, Following, WrongRevision
from shared.protocol import codec
from shared.runtime.tasks import TaskOwner

log = logging.getLogger(__name__)

LEASES_SYNC_TIMEOUT_S = 10.0
FOLLOW_RETRY_S = 5.0
VALIDITY_MARGIN_S = 0.5


RETRY_AFTER_FAILURE_S = 0.25


def new_id() -> str:
    return uuid.uuid4().hex


class Leases:
    def __init__(
        self, bucket: Bucket, owner: TaskOwner, name: str, prefix: str, heartbeat_s: float, ttl_s: int
    ) -> None:
        self.name = name  # for task names and logs
        self.bucket = bucket
        self.owner = owner
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.replica_id = new_id()
        self.live: set[str] = set()
        self.dead: set[str] = set()
        self.on_change: list[Callable[[], None]] = []  # the live set changed
        self.on_death: list[Callable[[str], None]] = []
        self.on_fenced: Callable[[], Awaitable[None]] | None = None
        # Called once a fenced replica holds a lease again, under its new id.
        self.on_retaken: Callable[[], Awaitable[None]] | None = None
        self._revision = 0
        self._valid_until = 0.0  # loop time until which this replica's own lease surely holds
        self._released = False
        self._following: Following | None = None

    def key(self, replica_id: str) -> str:
        return f"{self.prefix}.{replica_id}"

    async def start(self) -> None:
        await patiently(self._take, f"{self.name} lease")
        self._following = await self.bucket.follow(f"{self.prefix}.*", self._on_entry)
        self.owner.keep(f"{self.name}_heartbeat", self._heartbeat)
        async with asyncio.timeout(LEASES_SYNC_TIMEOUT_S):
            await self._following.synced.wait()

    async def release(self) -> None:
        """Drop this replica's lease for good: the others see it go at once."""
        self._released = True
        self._valid_until = 0.0
        if self._following is not None:
            await self._following.stop()
        try:
            await self.bucket.delete(self.key(self.replica_id))
        except NATS_ERRORS as err:
            log.info("lease not released: %s", err)

    def valid(self) -> bool:
        """Whether this replica's own lease surely has not expired: renewed less than `ttl_s` (less a
        margin) ago, counted from when the renewal was sent (the server counts from later). A replica
        paused or cut off longer acts for nobody until a renewal succeeds: its work may be another's."""
        return asyncio.get_running_loop().time() < self._valid_until

    def is_dead(self, replica_id: str) -> bool:
        return replica_id in self.dead

    def check(self, replica_id: str, if_dead: Callable[[str], Awaitable[None]]) -> None:
        """Learn whether a replica never seen alive still holds a lease (one a record names); if
        not, it died before this replica started: mark it dead and run `if_dead`."""
        if replica_id in self.live or replica_id in self.dead:
            return
        self.live.add(replica_id)  # presumed alive until the lease read says otherwise
        self.owner.spawn(self._check(replica_id, if_dead), f"{self.name}_check")

    async def _check(self, replica_id: str, if_dead: Callable[[str], Awaitable[None]]) -> None:
        try:
            read = await self.bucket.read(self.key(replica_id), fresh=True)
        except NATS_ERRORS:
            self.live.discard(replica_id)  # ask again next time
            return
        if read.value is None:
            self._mark_dead(replica_id)
            await if_dead(replica_id)

    async def _take(self) -> None:
        sent = asyncio.get_running_loop().time()
        body = codec.dumps({"replica_id": self.replica_id, "at": codec.now_iso()})
        self._revision = await self.bucket.write(self.key(self.replica_id), body, 0, self.ttl_s)
        self._valid_until = sent + self.ttl_s - VALIDITY_MARGIN_S
        self._set_live(self.replica_id)

    async def _heartbeat(self) -> None:
        delay = self.heartbeat_s
        while True:
            await asyncio.sleep(delay)
            delay = self.heartbeat_s
            if self._released:
                continue
            body = codec.dumps({"replica_id": self.replica_id, "at": codec.now_iso()})
            sent = asyncio.get_running_loop().time()
            try:
                self._revision = await self.bucket.write(
                    self.key(self.replica_id), body, self._revision, self.ttl_s
                )
                self._valid_until = sent + self.ttl_s - VALIDITY_MARGIN_S
            except WrongRevision:
                if self._released:
                    continue
                log.error("%s lease expired", self.name, extra={"replica_id": self.replica_id})
                if self.on_fenced is not None:
                    await self.on_fenced()
                fenced, self.replica_id = self.replica_id, new_id()
                # Its expiry may have been seen while it was still ours (and so not counted): every
                # other replica has it dead, and so must this one, or they disagree on who owns what.
                self._mark_dead(fenced)
                await self._take()
                if self.on_retaken is not None:
                    await self.on_retaken()
            except NATS_ERRORS as err:
                # A node lost or an election: try again soon, so a renewal lands as soon as the
                # store answers, before the lease runs out if it can.
                log.warning("lease renewal failed: %s", err)
                delay = min(self.heartbeat_s, RETRY_AFTER_FAILURE_S)

    def _on_entry(self, entry: Entry) -> None:
        replica_id = entry.key.rsplit(".", 1)[-1]
        if entry.value is None:
            self._mark_dead(replica_id)
        elif replica_id not in self.dead:
            self._set_live(replica_id)

    def _set_live(self, replica_id: str) -> None:
        if replica_id not in self.live:
            self.live.add(replica_id)
            for changed in self.on_change:
                changed()

    def _mark_dead(self, replica_id: str) -> None:
        if replica_id == self.replica_id or replica_id in self.dead:
            return
        self.live.discard(replica_id)
        self.dead.add(replica_id)
        for changed in self.on_change:
            changed()
        for died in self.on_death:
            died(replica_id)


class LiveReplicas:
    """The replicas of another service whose leases are alive, followed read-only (a gateway routing
    to the dispatchers' owners). Empty until the bucket exists and has been read."""

    def __init__(self, js: JetStreamContext, bucket: str, prefix: str) -> None:
        self.js = js
        self.bucket = bucket
        self.prefix = prefix
        self.live: frozenset[str] = frozenset()

    async def follow(self) -> None:
        """Follow the leases (once the bucket exists: its service creates it) until cancelled."""
        following: Following | None = None
        try:
            while following is None:
                try:
                    kv = await self.js.key_value(self.bucket)
                    following = await Bucket(self.js, kv, self.bucket).follow(
                        f"{self.prefix}.*", self._on_entry
                    )
                except NATS_ERRORS as err:
                    log.info("%s not followed yet: %s", self.bucket, err)
                    await asyncio.sleep(FOLLOW_RETRY_S)
            await asyncio.Event().wait()
        finally:
            if following is not None:
                await following.stop()

    def _on_entry(self, entry: Entry) -> None:
        replica_id = entry.key.rsplit(".", 1)[-1]
        if entry.value is None:
            self.live = self.live - {replica_id}
        else:
            self.live = self.live | {replica_id}
