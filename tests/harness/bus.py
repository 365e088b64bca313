"""The internal API from outside: JSON requests on NATS and listeners on published subjects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

JsonObj = dict[str, Any]


async def request(nc: NATS, subject: str, body: Any, timeout: float = 5.0) -> JsonObj:
    """One request; the whole reply body (`ok` included). `bytes` are sent as they are."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = json.loads((await nc.request(subject, raw, timeout=timeout)).data)
    assert isinstance(reply, dict), reply
    return reply


def assert_ok(reply: JsonObj) -> JsonObj:
    assert reply.get("ok") is True, reply
    return reply


def assert_answered(reply: JsonObj) -> None:
    """A reply of the convention (DESIGN section 4): `ok`, or exactly `{"ok": false, "error":
    {"code", "message"}}` with both non-empty."""
    assert isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert set(reply) == {"ok", "error"} and reply["error"]["code"] and reply["error"]["message"], reply


def assert_error(reply: JsonObj, code: str) -> JsonObj:
    """`{"ok": false, "error": {"code", "message"}}` and nothing else (DESIGN section 4); the error."""
    assert reply.get("ok") is False and set(reply) == {"ok", "error"}, reply
    err: JsonObj = reply["error"]
    assert err.get("code") == code, reply
    assert isinstance(err.get("message"), str) and err["message"], reply
    return err


class Subscription:
    """Everything published on one subject pattern, decoded, in arrival order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, JsonObj]] = asyncio.Queue()
        self.seen: list[JsonObj] = []
        self.last_subject = ""
        self.sub: Any = None

    async def _on_msg(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        self.seen.append(data)
        await self.queue.put((msg.subject, data))

    async def next(self, timeout: float = 5.0, **match: Any) -> JsonObj:
        """The next message whose body holds the `match` items (earlier ones stay in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                subject, data = await asyncio.wait_for(self.queue.get(), deadline - time.monotonic())
            except TimeoutError:
                raise TimeoutError(f"nothing like {match} within {timeout}s; seen {self.seen}") from None
            if all(data.get(k) == v for k, v in match.items()):
                self.last_subject = subject
                return data

    async def quiet(self, seconds: float) -> list[JsonObj]:
        """Everything that arrives within `seconds` (to show that nothing did)."""
        out: list[JsonObj] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append((await asyncio.wait_for(self.queue.get(), left))[1])
            except TimeoutError:
                break
        return out

    async def stop(self) -> None:
        await self.sub.unsubscribe()


async def subscribe(nc: NATS, subject: str) -> Subscription:
    sub = Subscription()
    sub.sub = await nc.subscribe(subject, cb=sub._on_msg)
    await nc.flush()
    return sub


@contextlib.asynccontextmanager
async def every_subject(nc: NATS) -> AsyncIterator[list[str]]:
    """The subjects of everything published on the broker inside the block, in order."""
    seen: list[str] = []

    async def note(msg: Msg) -> None:
        seen.append(msg.subject)

    sub = await nc.subscribe(">", cb=note)
    try:
        yield seen
    finally:
        await nc.flush()
        await sub.unsubscribe()
