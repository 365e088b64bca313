"""The shared request path (`shared.broker.connection.request`, `Requests`) on a real nats-server:
one reply subscription per connection, so every answer must reach the caller that asked."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.broker.connection import request
from shared.protocol import codec
from shared.protocol.errors import NoResponders, NotFound, Unavailable


async def test_many_requests_in_flight_each_get_their_own_answer(nc: NATS) -> None:
    subject = f"test.echo.{uuid.uuid4().hex}"

    async def echo(msg: Msg) -> None:
        await asyncio.sleep(0.001 * (codec.loads(msg.data)["n"] % 7))  # answers out of order
        await msg.respond(codec.dumps({"ok": True, "n": codec.loads(msg.data)["n"]}))

    sub = await nc.subscribe(subject, cb=echo)
    try:
        replies = await asyncio.gather(*(request(nc, subject, {"n": n}, 5) for n in range(300)))
        assert [reply["n"] for reply in replies] == list(range(300))
    finally:
        await sub.unsubscribe()


async def test_nobody_listening_is_no_responders(nc: NATS) -> None:
    with pytest.raises(NoResponders):
        await request(nc, f"test.nobody.{uuid.uuid4().hex}", {}, 5)


async def test_a_silent_listener_is_unavailable_after_the_timeout(nc: NATS) -> None:
    subject = f"test.silent.{uuid.uuid4().hex}"

    async def ignore(msg: Msg) -> None:
        pass

    sub = await nc.subscribe(subject, cb=ignore)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await request(nc, subject, {}, 0.3)
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        await sub.unsubscribe()


async def test_an_error_reply_raises_its_error(nc: NATS) -> None:
    subject = f"test.refuse.{uuid.uuid4().hex}"

    async def refuse(msg: Msg) -> None:
        await msg.respond(codec.dumps({"ok": False, "error": {"code": "not_found", "message": "no such"}}))

    sub = await nc.subscribe(subject, cb=refuse)
    try:
        with pytest.raises(NotFound):
            await request(nc, subject, {}, 5)
    finally:
        await sub.unsubscribe()
