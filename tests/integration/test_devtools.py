"""The developer tools: the `ikiro` CLI (run as a real process), the command client it is built on
and the simulated edge agent, against in-process services (the socket-refused fallback needs the
gateway's internals)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from devtools.cli import main
from devtools.sim_agent import SimAgent
from shared.auth import verify_edge_token
from shared.client import CommandClient, SessionClient
from shared.runtime.service import CLOSING
from shared.supabase import SupabaseVerifier
from tests.harness.bus import request
from tests.harness.edge import get_agent, submit_ok, wait_state
from tests.harness.miniapp import new_session
from tests.harness.proc import ROOT, NatsServer, clean_env, wait_until
from tests.integration import apps

MSG = {"thread_id": "t1", "text": "hi"}


@pytest.fixture(scope="module")
async def edge(broker: NatsServer) -> AsyncIterator[apps.RunningApp]:
    """A dispatcher and an edge gateway in-process; the gateway is what the tests talk to."""
    dispatcher = await apps.dispatcher(broker.url)
    gateway = await apps.edge_gateway(broker.url)
    yield gateway
    await gateway.stop()
    await dispatcher.stop()


async def ikiro(*args: str) -> tuple[int, list[str]]:
    env = clean_env(SUPABASE_JWT_SECRET=apps.JWT_SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devtools.cli", *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines()


@contextlib.asynccontextmanager
async def running(agent: SimAgent) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    agent.on_event = lambda kind, data: seen.append((kind, data))
    task = asyncio.create_task(agent.run())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sim(gateway: apps.RunningApp, agent_id: str, fail: bool = False) -> SimAgent:
    return SimAgent(
        base_url=gateway.http, edge_agent_id=agent_id, secret=apps.EDGE_SECRET, poll_interval_s=0.1, fail=fail
    )


async def online(nc: NATS, agent_id: str) -> bool:
    return bool((await get_agent(nc, agent_id))["online"])


def test_token_subcommand_mints_a_valid_edge_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--agent", "cli-agent", "--secret", "s"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify_edge_token(token, "cli-agent", ["s"], 60, allow_legacy=False).user_phone == "+15550100"


async def test_sim_agent_acks_commands_over_its_socket_as_completed_or_failed(
    edge: apps.RunningApp, nc: NATS, agent: str
) -> None:
    good, bad = agent, agent + "-fails"
    async with running(sim(edge, good)) as seen, running(sim(edge, bad, fail=True)):
        await wait_until(lambda: online(nc, good), 10, what="agent online")
        await wait_until(lambda: online(nc, bad), 10, what="failing agent online")
        done, failed = await submit_ok(nc, good, payload=MSG), await submit_ok(nc, bad, payload=MSG)
        await wait_state(nc, done, "completed")
        assert (await wait_state(nc, failed, "failed"))["error"] == "simulated failure"
    assert ("connected", {"url": f"{edge.ws}/edge/ws?edge_agent_id={good}"}) in seen


async def test_sim_agent_falls_back_to_sync_when_its_socket_is_refused(
    edge: apps.RunningApp, nc: NATS, agent: str
) -> None:
    edge.app[CLOSING].set()  # the upgrade is refused with 503; /edge/sync still answers
    try:
        cid = await submit_ok(nc, agent, payload=MSG)
        async with running(sim(edge, agent)) as seen:
            await wait_state(nc, cid, "completed")
    finally:
        edge.app[CLOSING].clear()
    assert any(kind == "fallback" for kind, _ in seen)
    assert any(kind == "command" and data.get("via") == "sync" for kind, data in seen)


async def test_submit_follows_the_command_to_completed_and_get_agent_cancel_read_it(
    edge: apps.RunningApp, broker: NatsServer, nc: NATS, agent: str
) -> None:
    async with running(sim(edge, agent)):
        await wait_until(lambda: online(nc, agent), 10, what="agent online")
        args = [
            "--agent",
            agent,
            "--type",
            "send_message_now",
            "--payload",
            json.dumps(MSG),
            "--timeout",
            "20",
        ]
        code, out = await ikiro("submit", "--nats", broker.url, *args)
        lines = [json.loads(line) for line in out]
        assert code == 0
        assert lines[0]["state"] == "queued" and lines[0]["duplicate"] is False
        assert [line["state"] for line in lines[1:]] == [
            "queued",
            "sent",
            "received",
            "executing",
            "completed",
        ]
        cid = lines[0]["command_id"]
        code, out = await ikiro("get", "--nats", broker.url, cid)
        assert code == 0 and json.loads(out[0])["state"] == "completed"
        code, out = await ikiro("agent", "--nats", broker.url, agent)
        assert code == 0 and json.loads(out[0])["online"] is True
        code, out = await ikiro("cancel", "--nats", broker.url, cid)  # finished: not cancellable
        assert code == 2 and out == []


async def test_submit_without_following_then_cancel(
    edge: apps.RunningApp, broker: NatsServer, agent: str
) -> None:
    payload = json.dumps({"event_type": "e"})
    args = ["--agent", agent, "--type", "emit_event", "--payload", payload, "--ttl", "60", "--no-follow"]
    code, out = await ikiro("submit", "--nats", broker.url, *args)
    assert code == 0 and len(out) == 1 and json.loads(out[0])["state"] == "queued"
    code, out = await ikiro("cancel", "--nats", broker.url, json.loads(out[0])["command_id"])
    assert code == 0 and (json.loads(out[0])["state"], json.loads(out[0])["ttl_s"]) == ("cancelled", 60)


async def test_commands_lists_an_agents_queue_and_purge_cancels_it(
    edge: apps.RunningApp, broker: NatsServer, agent: str
) -> None:
    submit = ["--agent", agent, "--type", "emit_event", "--payload", '{"event_type": "e"}', "--no-follow"]
    ids = [
        json.loads((await ikiro("submit", "--nats", broker.url, *submit))[1][0])["command_id"] for _ in "ab"
    ]
    code, out = await ikiro("commands", "--nats", broker.url, agent)
    assert code == 0 and [line.split()[0] for line in out[1:3]] == ids and out[-1] == "2 of 2 unfinished"
    code, out = await ikiro("purge", "--nats", broker.url, "--reason", "user left", "--yes", agent)
    assert code == 0 and out == ["2 cancelled, 0 left (received or executing)"]
    code, out = await ikiro("commands", "--nats", broker.url, agent)
    assert code == 0 and out[-1] == "0 of 0 unfinished"


async def test_command_client_follows_one_command_by_id_from_before_its_submission(
    edge: apps.RunningApp, nc: NATS, agent: str
) -> None:
    client, cid = CommandClient(nc), uuid.uuid4()
    async with client.lifecycle(command_id=cid) as events:
        submitted = await client.submit(agent, "emit_event", {"event_type": "e"}, command_id=cid)
        first = await anext(events)
    assert (submitted.command_id, first.command_id, first.state) == (cid, cid, "queued")


async def test_miniapp_token_mints_a_verifiable_jwt() -> None:
    code, out = await ikiro("miniapp-token", "--user", "cli-user", "--ttl", "120")
    assert code == 0
    claims = await SupabaseVerifier("authenticated", secret=apps.JWT_SECRET).verify(out[0].strip())
    assert claims.sub == "cli-user"


async def test_miniapp_join_prints_frames_and_push_updates_state(broker: NatsServer, nc: NATS) -> None:
    gateway = await apps.miniapp_gateway(broker.url)
    session = new_session()
    env = clean_env(NATS_URL=broker.url, SUPABASE_JWT_SECRET=apps.JWT_SECRET)
    joiner = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "devtools.cli",
            "miniapp-join",
            session,
            "--url",
            gateway.ws,
            "--user",
            "watcher",
        ],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert joiner.stdout is not None
        assert json.loads(await asyncio.wait_for(joiner.stdout.readline(), 20))["type"] == "connected"
        code, out = await ikiro("miniapp-push", session, "--nats", broker.url, "--patch", '{"phase": "vote"}')
        assert code == 0 and json.loads(out[0]) == {"version": 1}
        assert json.loads(await asyncio.wait_for(joiner.stdout.readline(), 20)) == {
            "type": "state_update",
            "data": {"patch": {"phase": "vote"}, "version": 1, "source": "server"},
        }
        reply = await request(nc, "miniapp.sessions.get", {"session_id": session})
        assert reply["state"] == {"phase": "vote"} and reply["connection_count"] == 1
    finally:
        joiner.terminate()
        await asyncio.wait_for(joiner.wait(), 20)
        await gateway.stop()


async def test_miniapp_members_sets_shows_and_clears_a_session_list(broker: NatsServer, nc: NATS) -> None:
    gateway = await apps.miniapp_gateway(broker.url)
    session = new_session()
    try:
        code, out = await ikiro("miniapp-members", session, "--nats", broker.url, "--set", "alice", "bob")
        assert code == 0 and json.loads(out[0]) == {"members": ["alice", "bob"], "closed": 0}
        code, out = await ikiro("miniapp-members", session, "--nats", broker.url)
        assert code == 0 and json.loads(out[0]) == {"members": ["alice", "bob"]}
        sessions = SessionClient(nc)
        assert await sessions.members(session) == ["alice", "bob"]
        assert (await sessions.set_members(session, ["carol"])).members == ["carol"]
        code, out = await ikiro("miniapp-members", session, "--nats", broker.url, "--clear")
        assert code == 0 and json.loads(out[0]) == {"members": None, "closed": 0}
        assert (await sessions.get(session)).members is None
    finally:
        await gateway.stop()
