"""A NATS node lost is a pause for players, not a disconnect (DESIGN section 5): on a 3-node
JetStream cluster, the node that leads the sessions' bucket is SIGKILLed while every member of a
session spread over two gateway replicas keeps sending updates. No socket is closed, and every
update is answered by its echo, in the order sent (none refused), once a new leader is elected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest

from shared.protocol import subjects
from soak.cluster import Cluster
from tests.harness.bus import request
from tests.harness.miniapp import join, new_session, new_user, replica_env
from tests.harness.proc import Service
from tests.harness.ws import Socket

MEMBERS_PER_REPLICA = 2
SEND_EVERY_S = 0.2
SENDING_S = 8.0


@pytest.fixture
async def cluster(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[Cluster]:
    nodes = Cluster(tmp_path / "nats", tmp_path, http)
    try:
        await nodes.start(60.0)
        yield nodes
    finally:
        nodes.stop()


async def sessions_leader(urls: str) -> str:
    nc = await nats.connect(urls.split(","))
    try:
        info = await nc.jetstream().stream_info(f"KV_{subjects.MINIAPP_SESSIONS_BUCKET}")
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def member_sends(member: Socket, name: str, stop: asyncio.Event) -> list[str]:
    """Send `{name:n: n}` updates until `stop`; the ids sent, in order."""
    sent: list[str] = []
    while not stop.is_set():
        msg_id = f"{name}:{len(sent)}"
        try:
            await member.send("state_update", {"patch": {msg_id: len(sent)}, "client_msg_id": msg_id})
        except aiohttp.ClientError:
            await member.next(timeout=5)  # the close frame, if any
            raise AssertionError(f"{name} closed: {member.close_code} {member.close_reason}") from None
        sent.append(msg_id)
        await asyncio.sleep(SEND_EVERY_S)
    return sent


@pytest.mark.timeout(120)
async def test_killing_the_sessions_leader_is_a_pause_no_socket_closed_no_update_refused(
    cluster: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = replica_env(cluster.urls, JETSTREAM_REPLICAS="3", MAX_CONNECTIONS_PER_SESSION="50")
    replicas = [Service("services.miniapp_gateway", env, tmp_path) for _ in range(2)]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            await replica.ready(timeout=60)
        session = new_session()
        members = [
            (await join(http, replica, session, new_user()))[0]
            for replica in replicas
            for _ in range(MEMBERS_PER_REPLICA)
        ]
        leader = await sessions_leader(cluster.urls)
        stop = asyncio.Event()
        senders = [asyncio.create_task(member_sends(m, f"m{i}", stop)) for i, m in enumerate(members)]
        await asyncio.sleep(1.0)
        cluster.node(leader).child.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(SENDING_S)
        stop.set()
        sent = await asyncio.gather(*senders)

        echoed_of: list[list[str]] = []
        for member, ids in zip(members, sent, strict=True):
            echoed: list[str] = []
            deadline = time.monotonic() + 15
            while len(echoed) < len(ids) and time.monotonic() < deadline:
                try:
                    frame = await member.next(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                assert frame is not None, f"socket closed {member.close_code} {member.close_reason}"
                assert frame["type"] != "error", (frame, time.monotonic() - killed_at)
                if frame["type"] == "state_update" and frame["data"].get("client_msg_id") in ids:
                    echoed.append(frame["data"]["client_msg_id"])
            assert echoed == [i for i in ids if i in echoed], "echoes out of order"
            assert member.close_code is None
            echoed_of.append(echoed)
        for member in members:
            await member.ping_pong()
        # Every update is in the state; a watcher that lost its place may have had to send some as
        # one catch-up update without their echoes (the bound: at least 90% echoed).
        nc = await nats.connect(cluster.urls.split(","))
        try:
            reply = await request(nc, subjects.MINIAPP_GET, {"session_id": session}, timeout=10)
        finally:
            await nc.close()
        all_sent = [i for ids in sent for i in ids]
        assert set(all_sent) <= set(reply["state"]), "an update is missing from the state"
        total_echoed = sum(len(e) for e in echoed_of)
        assert total_echoed >= 0.9 * len(all_sent), f"{total_echoed} of {len(all_sent)} echoed"
    finally:
        for replica in replicas:
            replica.stop()
