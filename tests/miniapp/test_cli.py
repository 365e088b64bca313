"""The MiniApp subcommands of `ikiro`, run as real processes against real gateways."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from shared.supabase import SupabaseVerifier
from tests.miniapp.support import AUDIENCE, SECRET, Gateway, join, new_session
from tests.support import ROOT


async def ikiro(*args: str, nats_url: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NATS_URL": nats_url, "SUPABASE_JWT_SECRET": SECRET}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devtools.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_miniapp_token_mints_a_verifiable_jwt(nats_url: str) -> None:
    proc = await ikiro("miniapp-token", "--user", "cli-user", "--ttl", "120", nats_url=nats_url)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    claims = await SupabaseVerifier(AUDIENCE, secret=SECRET).verify(out.decode().strip())
    assert claims.sub == "cli-user"


async def test_miniapp_join_prints_frames_and_push_updates_state(
    pair: tuple[Gateway, Gateway], nats_url: str
) -> None:
    a, b = pair
    session = new_session()
    url = f"ws://127.0.0.1:{a.settings.port}"
    joiner = await ikiro("miniapp-join", session, "--url", url, "--user", "watcher", nats_url=nats_url)
    assert joiner.stdout is not None

    async def line() -> dict[str, Any]:
        assert joiner.stdout is not None
        raw = await asyncio.wait_for(joiner.stdout.readline(), 20)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    assert (await line())["type"] == "connected"
    pusher = await ikiro("miniapp-push", session, "--patch", '{"phase": "vote"}', nats_url=nats_url)
    out, _ = await asyncio.wait_for(pusher.communicate(), 30)
    assert pusher.returncode == 0 and json.loads(out) == {"version": 1}
    update = await line()
    assert update == {
        "type": "state_update",
        "data": {"patch": {"phase": "vote"}, "version": 1, "source": "server"},
    }
    peer, connected = await join(b, session)
    assert connected["state"] == {"phase": "vote"}
    await peer.close()
    joiner.terminate()
    await asyncio.wait_for(joiner.wait(), 20)
