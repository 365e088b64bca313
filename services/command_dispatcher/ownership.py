"""Which dispatcher replica owns which partition of the command path (`subjects.partition_of`).

Replicas hold leases (`shared.broker.leases`); each partition belongs to the live replica that
rendezvous hashing picks for it, so every replica computes the same owners from the same live set
and a change moves only the partitions of the replica that came or went. A replica gives up a
partition the moment it sees another win it; the winner takes it `HANDOFF_S` later if its old owner
is alive (by then that one has seen the change and stopped, or its own lease has lapsed), at once if
it died. A replica acts for its partitions only while its own lease surely holds (`active`), and
every record write is a compare-and-set, so one paused past its lease cannot undo a new owner's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.broker.connection import NATS_ERRORS
from shared.broker.kv import Bucket
from shared.broker.leases import Leases
from shared.protocol import subjects
from shared.runtime.tasks import TaskOwner

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Long enough to ride out a JetStream leader election (some 4 s) without giving up the partitions;
# a dead replica's partitions move after this, plus their reading.
LEASE_TTL_S = 5
# How long a partition's new owner waits for a live old owner to let it go (one lease TTL: an old
# owner that has not seen the change by then has a lapsed lease, and acts for nobody). The old
# owner says when it has let go (`subjects.DISPATCHER_HANDOFF`): then the wait ends at once.
HANDOFF_S = float(LEASE_TTL_S)
RETRY_S = 1.0


class Partitions(Protocol):
    """What a replica does as it takes and lets go of partitions."""

    async def load(self, partition: int) -> None:
        """Read the partition's work (before it counts as held)."""

    async def open(self, partition: int) -> None:
        """Start answering for the partition (it counts as held)."""

    async def drop(self, partition: int) -> None:
        """Stop answering for the partition and forget its work."""


class Ownership:
    def __init__(self, nc: NATS, bucket: Bucket, owner: TaskOwner, partitions: Partitions) -> None:
        self.nc = nc
        self._handoff: Subscription | None = None
        self._changed = asyncio.Event()
        self.leases = Leases(
            bucket, owner, "ownership", subjects.DISPATCHER_LEASE_PREFIX, HEARTBEAT_S, LEASE_TTL_S
        )
        self.leases.on_change.append(self._changed.set)
        self.leases.on_fenced = self._fenced
        self.owner = owner
        self.partitions = partitions
        self.held: set[int] = set()
        self._owners: dict[int, str | None] = {}  # each partition's owner, as last computed
        self._eligible: dict[int, float] = {}  # partitions won, and from when they may be taken
        self._let_go: dict[int, float] = {}  # when another replica last said it let a partition go
        self._stopped = False

    def owner_of(self, partition: int) -> str | None:
        """The replica this one believes owns `partition` (a hint: ownership may be moving)."""
        return self._owners.get(partition)

    def active(self, partition: int) -> bool:
        """Whether this replica serves `partition` now."""
        return partition in self.held and self.leases.valid()

    async def start(self) -> None:
        """Take the lease, then the partitions no live replica holds; the rest follow in `run`."""
        self._handoff = await self.nc.subscribe(subjects.DISPATCHER_HANDOFF, cb=self._on_handoff)
        await self.leases.start()
        await self._reconcile()
        self.owner.keep("ownership", self.run)

    async def stop(self) -> None:
        """Let every partition go and drop the lease: the others take them over at once."""
        if self._stopped:
            return
        self._stopped = True
        if self._handoff is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._handoff.unsubscribe()
        released = sorted(self.held)
        for partition in released:
            await self._release(partition)
        await self.leases.release()
        with contextlib.suppress(*NATS_ERRORS):
            await self.nc.publish(subjects.DISPATCHER_HANDOFF, orjson.dumps(released))

    async def run(self) -> None:
        while True:
            wake = await self._reconcile()
            try:
                async with asyncio.timeout(wake):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _reconcile(self) -> float | None:
        """Bring the partitions held in line with the live set; how long until there is more to do."""
        self._changed.clear()
        if self._stopped:
            return None
        held = len(self.held)
        try:
            return await self._rebalance()
        finally:
            if len(self.held) != held:
                log.info(
                    "holding %d of %d partitions",
                    len(self.held),
                    subjects.PARTITIONS,
                    extra={"replica_id": self.leases.replica_id, "live_replicas": len(self.leases.live)},
                )

    async def _rebalance(self) -> float | None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        live = set(self.leases.live)
        me = self.leases.replica_id
        for partition in range(subjects.PARTITIONS):
            winner = subjects.owner_of(partition, live)
            if partition not in self._owners:
                # First look: whoever would hold it without this replica holds it now.
                self._owners[partition] = subjects.owner_of(partition, live - {me})
            before = self._owners[partition]
            if winner == before and (winner != me or partition in self.held or partition in self._eligible):
                continue
            self._owners[partition] = winner
            if winner == me:
                handing_over = before is not None and before != me and before in live
                if self._let_go.get(partition, -HANDOFF_S) > now - HANDOFF_S:
                    handing_over = False  # its old owner said it let go just now
                self._eligible.setdefault(partition, now + HANDOFF_S if handing_over else now)
            else:
                self._eligible.pop(partition, None)
        lost = sorted(self.held - {p for p, o in self._owners.items() if o == me})
        for partition in lost:
            await self._release(partition)
        if lost:
            with contextlib.suppress(*NATS_ERRORS):
                await self.nc.publish(subjects.DISPATCHER_HANDOFF, orjson.dumps(lost))
        due = [p for p, at in self._eligible.items() if at <= now]
        if due and self.leases.valid():
            results = await asyncio.gather(*(self._acquire(p) for p in due), return_exceptions=True)
            for partition, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("partition %d not taken, again in %.0f s: %s", partition, RETRY_S, result)
                    self._eligible[partition] = now + RETRY_S
        elif due:
            for partition in due:
                self._eligible[partition] = now + RETRY_S
        waits = [at - loop.time() for at in self._eligible.values()]
        return max(min(waits), 0.0) if waits else None

    async def _on_handoff(self, msg: Msg) -> None:
        """Another replica let partitions go: those this one waits for may be taken now."""
        try:
            released = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(released, list):
            return
        now = asyncio.get_running_loop().time()
        for partition in released:
            if not isinstance(partition, int):
                continue
            self._let_go[partition] = now  # it may come before this replica knows it won the partition
            if partition in self._eligible:
                self._eligible[partition] = min(self._eligible[partition], now)
                self._changed.set()

    async def _acquire(self, partition: int) -> None:
        try:
            await self.partitions.load(partition)
        except BaseException:
            await self.partitions.drop(partition)
            raise
        # The live set may have moved on while it was read: keep it only if still won.
        if self._owners.get(partition) != self.leases.replica_id:
            await self.partitions.drop(partition)
            return
        self.held.add(partition)
        self._eligible.pop(partition, None)
        try:
            await self.partitions.open(partition)
        except BaseException:
            await self._release(partition)
            raise
        log.debug("partition %d taken", partition, extra={"replica_id": self.leases.replica_id})

    async def _release(self, partition: int) -> None:
        self.held.discard(partition)
        try:
            await self.partitions.drop(partition)
        except NATS_ERRORS as err:
            log.warning("partition %d let go uncleanly: %s", partition, err)
        log.debug("partition %d let go", partition, extra={"replica_id": self.leases.replica_id})

    async def _fenced(self) -> None:
        """This replica's lease expired (it was paused or cut off): its partitions may be another's."""
        for partition in sorted(self.held):
            await self._release(partition)
        self._owners.clear()
        self._eligible.clear()
        self._changed.set()
