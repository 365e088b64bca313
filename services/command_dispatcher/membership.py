"""Which dispatcher replica runs an agent's timers: rendezvous hashing over the live replicas.

Every replica sees every unfinished command (`view.py`), and any of them could act on a due timer
(every write is a compare-and-set); owning an agent only keeps replicas from all doing the same
work at once. When a replica dies its lease expires (`LEASE_TTL_S`) and its agents move to the
others, which already hold their records: failover is the lease TTL plus one timer recheck.
"""

from __future__ import annotations

import zlib

from shared.broker.kv import Bucket
from shared.broker.leases import Leases
from shared.protocol import subjects
from shared.runtime.tasks import TaskOwner

HEARTBEAT_S = 1.0
LEASE_TTL_S = 3


class Membership:
    def __init__(self, bucket: Bucket, owner: TaskOwner) -> None:
        self.leases = Leases(
            bucket, owner, "membership", subjects.DISPATCHER_LEASE_PREFIX, HEARTBEAT_S, LEASE_TTL_S
        )

    async def start(self) -> None:
        await self.leases.start()

    async def release(self) -> None:
        await self.leases.release()

    def owns(self, edge_agent_id: str) -> bool:
        live = self.leases.live
        if len(live) <= 1:
            return True
        key = edge_agent_id.encode()
        return (
            max(live, key=lambda replica: zlib.crc32(key, zlib.crc32(replica.encode())))
            == self.leases.replica_id
        )
