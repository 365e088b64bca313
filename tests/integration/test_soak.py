"""The short chaos soak (soak/README.md): the whole backend on a 3-node JetStream cluster under
load while every kind of process is killed, paused and restarted; no command lost or executed
twice, no MiniApp update lost, every session agreeing at the end."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.harness.proc import ROOT

SOAK_S = 25


@pytest.mark.timeout(400)
async def test_nothing_is_lost_or_done_twice_under_faults_on_a_cluster() -> None:
    soak = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "soak",
        "--duration",
        str(SOAK_S),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(soak.communicate(), 360)
    finally:
        if soak.returncode is None:
            soak.terminate()  # the soak stops everything it started on SIGTERM
            await soak.wait()
    report = output.decode(errors="replace")
    assert soak.returncode == 0, report[-6000:]
