"""Dispatcher replicas share the work (DESIGN section 4, "Scale"): each partition of the agents has
one owner, a start reads only the unfinished commands of what it owns, and ownership moves when
replicas come and go without losing a command."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from services.command_dispatcher.app import DISPATCHER, Dispatcher
from shared.protocol import subjects
from tests.harness.edge import ack, edge_socket, get_command, make_token, submit_ok, wait_state
from tests.harness.proc import NatsServer, wait_until
from tests.integration import apps


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[NatsServer]:
    # Its own broker: only these replicas share the partitions.
    server = NatsServer(tmp_path, log=tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def dispatcher_of(app: apps.RunningApp) -> Dispatcher:
    return app.app[DISPATCHER]


def split_evenly(replicas: list[apps.RunningApp]) -> bool:
    held = [dispatcher_of(r).ownership.held for r in replicas]
    every = set().union(*held)
    return len(every) == subjects.PARTITIONS and sum(map(len, held)) == subjects.PARTITIONS


async def test_replicas_own_disjoint_partitions_and_hold_only_their_agents_commands(
    broker: NatsServer,
) -> None:
    replicas = [await apps.dispatcher(broker.url), await apps.dispatcher(broker.url)]
    nc = await nats.connect(broker.url)
    try:
        await wait_until(lambda: split_evenly(replicas), 15, what="every partition owned once")
        agents = [f"part-{uuid.uuid4().hex[:8]}" for _ in range(40)]
        for agent in agents:
            await submit_ok(nc, agent)  # offline agents: every command stays queued
        for replica in replicas:
            dispatcher = dispatcher_of(replica)
            mine = {a for a in agents if subjects.partition_of(a) in dispatcher.ownership.held}
            await wait_until(lambda d=dispatcher, m=mine: set(d.view.by_agent) == m, 5, what="own agents")
            assert 0 < len(mine) < len(agents)
    finally:
        await nc.close()
        for replica in replicas:
            await replica.stop()


async def test_a_start_reads_the_unfinished_commands_and_not_the_finished_ones(broker: NatsServer) -> None:
    first = await apps.dispatcher(broker.url)
    nc = await nats.connect(broker.url)
    try:
        agent = f"hist-{uuid.uuid4().hex[:8]}"
        finished = [await submit_ok(nc, agent) for _ in range(30)]
        for command_id in finished:
            reply = await nc.request(subjects.COMMANDS_CANCEL, f'{{"command_id": "{command_id}"}}'.encode())
            assert b'"ok":true' in reply.data.replace(b" ", b"")
        waiting = [await submit_ok(nc, agent) for _ in range(5)]
        # Only the unfinished are in the index a start reads.
        await wait_until(lambda: open_entries_are(nc, len(waiting)), 5, what="an index of the 5 waiting")
        await first.stop()

        second = await apps.dispatcher(broker.url)
        try:
            view = dispatcher_of(second).view
            assert set(view.by_agent[agent]) == set(waiting)
            assert len(view.records) == len(waiting)
            # Every record kept still answers, finished or not.
            assert (await get_command(nc, finished[0]))["state"] == "cancelled"
            assert (await get_command(nc, waiting[0]))["state"] == "queued"
        finally:
            await second.stop()
    finally:
        await nc.close()


async def open_entries_are(nc: NATS, expected: int) -> bool:
    info = await nc.jetstream().stream_info(subjects.OPEN_STREAM)
    return int(info.state.messages) == expected


async def test_commands_submitted_while_replicas_join_and_leave_all_complete_once(
    broker: NatsServer,
) -> None:
    # An ack wait longer than any handover: a command handed twice would be a double execution.
    slow = {"ack_timeout_s": 8.0, "max_ack_timeout_s": 16.0}
    replicas = [await apps.dispatcher(broker.url, **slow)]
    gateway = await apps.edge_gateway(broker.url)
    nc = await nats.connect(broker.url)
    agents = [f"move-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    handed: dict[str, int] = {}
    submitted: list[str] = []
    stop = asyncio.Event()  # no more submits
    done = asyncio.Event()  # every command completed: the agents may go

    async def agent_loop(agent: str) -> None:
        token = make_token(agent, secret=apps.EDGE_SECRET)
        async with edge_socket(gateway.ws, agent, token=token) as ws:
            while not done.is_set():
                try:
                    command = await ws.expect("command", timeout=1.0)
                except TimeoutError:
                    continue
                cid = command["command_id"]
                handed[cid] = handed.get(cid, 0) + 1
                if handed[cid] == 1:
                    await ack(ws, cid, "received")
                    await ack(ws, cid, "completed")

    async def submit_loop() -> None:
        n = 0
        while not stop.is_set():
            submitted.append(await submit_ok(nc, agents[n % len(agents)]))
            n += 1
            await asyncio.sleep(0.02)

    workers = [asyncio.create_task(agent_loop(a)) for a in agents]
    submitter = asyncio.create_task(submit_loop())
    try:
        await wait_until(lambda: len(submitted) > 20, 10, what="load on")
        replicas.append(await apps.dispatcher(broker.url, **slow))  # scale up: 1 -> 3
        replicas.append(await apps.dispatcher(broker.url, **slow))
        await wait_until(lambda: split_evenly(replicas), 15, what="three owners")
        leaving = replicas.pop(0)  # scale down: the first leaves gracefully
        await leaving.stop()
        await wait_until(lambda: split_evenly(replicas), 15, what="two owners")
        stop.set()
        await submitter
        for cid in submitted:
            await wait_state(nc, cid, "completed", timeout=20)
        assert all(handed.get(cid) == 1 for cid in submitted), "a command was handed over twice"
    finally:
        stop.set()
        done.set()
        submitter.cancel()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(submitter, *workers, return_exceptions=True)
        await nc.close()
        await gateway.stop()
        for replica in replicas:
            await replica.stop()


async def test_an_index_entry_whose_record_was_never_stored_is_dropped_and_the_start_goes_on(
    broker: NatsServer,
) -> None:
    nc = await nats.connect(broker.url)
    first = await apps.dispatcher(broker.url)  # creates the streams and buckets
    await first.stop()
    try:
        # A submit that died between its index entry and its record: a whole batch of such entries
        # (none of whose records exists) is answered "no results" by the server, not an empty batch.
        agent = f"ghost-{uuid.uuid4().hex[:8]}"
        entry = subjects.open_entry(subjects.partition_of(agent), str(uuid.uuid4()))
        await nc.jetstream().publish(entry, b"")
        second = await apps.dispatcher(broker.url)
        try:
            assert dispatcher_of(second).ownership.held == set(range(subjects.PARTITIONS))
            await wait_until(lambda: open_entries_are(nc, 0), 5, what="the stray entry purged")
        finally:
            await second.stop()
    finally:
        await nc.close()
