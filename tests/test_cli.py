"""The `ikiro` tool: tokens, submit-and-follow, and the simulated edge agent (socket and sync)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools.cli import main
from devtools.sim_agent import SimAgent
from shared.auth import verify_edge_token
from shared.protocol.errors import IkiroError
from shared.runtime.service import CLOSING
from tests.edge.support import SECRET, RunningApp, Stack, edge_stack
from tests.support import ROOT

MSG = {"thread_id": "t1", "text": "hi"}


def test_token_subcommand_mints_a_valid_edge_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--agent", "cli-agent", "--secret", "s"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify_edge_token(token, "cli-agent", ["s"], 60, allow_legacy=False).user_phone == "+15550100"


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


def sim(gateway: RunningApp, agent_id: str, **kw: Any) -> SimAgent:
    return SimAgent(base_url=gateway.url, edge_agent_id=agent_id, secret=SECRET, poll_interval_s=0.1, **kw)


async def test_sim_agent_acks_commands_over_its_socket(nats_url: str, agent_id: str) -> None:
    async with edge_stack(nats_url) as stack, running(sim(stack.gateway, agent_id)) as seen:
        await _wait_online(stack, agent_id)
        sub = await stack.client.submit(agent_id, "send_message_now", MSG)
        await stack.wait_state(str(sub.command_id), "completed")
        assert ("connected", {"url": f"{stack.gateway.ws_url}?edge_agent_id={agent_id}"}) in seen


async def test_sim_agent_can_fail_on_request(nats_url: str, agent_id: str) -> None:
    async with edge_stack(nats_url) as stack, running(sim(stack.gateway, agent_id, fail=True)):
        await _wait_online(stack, agent_id)
        sub = await stack.client.submit(agent_id, "send_message_now", MSG)
        await stack.wait_state(str(sub.command_id), "failed")
        assert (await stack.client.get(sub.command_id)).error == "simulated failure"


async def test_sim_agent_falls_back_to_sync_when_its_socket_is_refused(nats_url: str, agent_id: str) -> None:
    async with edge_stack(nats_url) as stack:
        stack.gateway.app[CLOSING].set()  # the upgrade is refused with 503; /edge/sync still answers
        sub = await stack.client.submit(agent_id, "send_message_now", MSG)
        async with running(sim(stack.gateway, agent_id)) as seen:
            await stack.wait_state(str(sub.command_id), "completed")
        assert any(kind == "fallback" for kind, _ in seen)
        assert any(kind == "command" and data.get("via") == "sync" for kind, data in seen)


async def _wait_online(stack: Stack, agent_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(IkiroError):
                if (await stack.client.agent(agent_id)).online:
                    return
            await asyncio.sleep(0.05)


async def test_submit_subcommand_follows_the_command_to_completed(nats_url: str, agent_id: str) -> None:
    async with edge_stack(nats_url) as stack, running(sim(stack.gateway, agent_id)):
        await _wait_online(stack, agent_id)
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "devtools.cli", "submit", "--nats", nats_url, "--agent", agent_id],
            *["--type", "send_message_now", "--payload", json.dumps(MSG), "--timeout", "20"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert proc.returncode == 0
    assert lines[0]["state"] == "queued" and lines[0]["duplicate"] is False
    assert [line["state"] for line in lines[1:]] == ["queued", "sent", "received", "executing", "completed"]
