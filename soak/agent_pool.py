"""The soak's handle on the simulated edge agents: worker processes of `python -m soak.agents`.

Each worker runs up to `AGENTS_PER_WORKER` agents from a JSON config, reports how many hold a
socket (a status file rewritten twice a second) and, on SIGTERM, writes what every agent saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .procs import Child, SoakError

AGENTS_PER_WORKER = 250


class AgentPool:
    """The soak's handle on the agent worker processes (`AGENTS_PER_WORKER` agents each)."""

    def __init__(
        self, tokens: dict[str, str], gateways: list[str], seed: int, work: Path, log_dir: Path
    ) -> None:
        self.agent_ids = list(tokens)
        self.workers: list[tuple[Child, Path, Path]] = []
        ids = self.agent_ids
        count = max(1, math.ceil(len(ids) / AGENTS_PER_WORKER))
        package_parent = Path(__file__).resolve().parent.parent
        for w in range(count):
            share = ids[w::count]
            status, result = work / f"agents-{w}.status.json", work / f"agents-{w}.result.json"
            config = {
                "agents": {a: tokens[a] for a in share},
                "gateways": gateways,
                "seed": seed,
                "status_file": str(status),
                "result_file": str(result),
            }
            path = work / f"agents-{w}.config.json"
            path.write_text(json.dumps(config))
            child = Child(
                f"agents-{w}",
                [sys.executable, "-m", "soak.agents", str(path)],
                dict(os.environ),
                package_parent,
                log_dir,
            )
            self.workers.append((child, status, result))

    def start(self) -> None:
        for child, _, _ in self.workers:
            child.start()

    def connected(self) -> int:
        """Agents holding a socket now, as the workers last reported (within half a second)."""
        total = 0
        for child, status, _ in self.workers:
            if not child.running:
                raise SoakError(f"{child.name} exited")
            try:
                total += int(json.loads(status.read_text())["connected"])
            except (OSError, ValueError, KeyError):
                continue
        return total

    async def wait_connected(self, count: int, timeout_s: float) -> float:
        started = time.monotonic()
        while self.connected() < count:
            if time.monotonic() - started > timeout_s:
                raise SoakError(f"only {self.connected()} of {count} agents connected in {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def stop(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """Stop every worker (SIGTERM) and return what each agent saw, by agent id."""
        for child, _, _ in self.workers:
            child.signal(signal.SIGTERM)
        results: dict[str, Any] = {}
        for child, _, result in self.workers:
            if await child.wait_exit(timeout_s) is None:
                child.stop_now()
                raise SoakError(f"{child.name} did not stop within {timeout_s:.0f} s")
            results.update(json.loads(result.read_text()))
        return results

    def stop_now(self) -> None:
        for child, _, _ in self.workers:
            child.stop_now()
