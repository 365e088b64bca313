"""Thin helpers over a JetStream KV bucket: compare-and-set writes with a per-message TTL, reads
that see server-placed delete markers, and one-shot scans.

nats-py's `KeyValue.update` takes no TTL and `KeyValue.get` mistakes a TTL delete marker for a
value, so writes and reads go to the bucket's stream directly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from shared import subjects

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
WRONG_LAST_SEQUENCE = (10071, 10164)


class WrongRevision(Exception):
    """Someone else wrote the key since the revision we read."""


@dataclass(frozen=True, slots=True)
class Read:
    value: bytes | None  # None: never written, deleted, or expired
    revision: int  # 0 when the key was never written


def is_removal(operation: str | None) -> bool:
    return operation in ("DEL", "PURGE")


class Bucket:
    def __init__(self, js: JetStreamContext, kv: KeyValue, name: str) -> None:
        self.js = js
        self.kv = kv
        self.name = name
        self.stream = f"KV_{name}"

    async def read(self, key: str, direct: bool = True) -> Read:
        """The key's latest value; `direct=False` asks the stream leader (never a lagging copy)."""
        try:
            msg = await self.js.get_msg(
                self.stream, subject=subjects.kv_subject(self.name, key), direct=direct
            )
        except nats.js.errors.NotFoundError:
            return Read(None, 0)
        headers = msg.headers or {}
        revision = msg.seq or 0
        if is_removal(headers.get(KV_OPERATION)) or MARKER_REASON in headers:
            return Read(None, revision)
        return Read(msg.data or b"", revision)

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


async def stop_watcher(watcher: Any) -> None:
    """Stop a KV watcher, whatever state its connection is in."""
    with contextlib.suppress(Exception):
        await watcher.stop()
