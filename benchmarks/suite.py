"""Run the chosen scenarios one after another, each on its own broker and processes, print and save.

Each scenario runs under a time bound; whatever happens, every process it started is stopped
before the next begins. A scenario that fails is reported as failed and the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from . import report
from .control import raise_fd_limit
from .report import ScenarioResult
from .scenarios import capacity, edge_path, fanout, scaleout, storm
from .stack import ROOT, Bench, Sizes

Scenario = Callable[[Bench], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "edge": ("1. Edge command path", edge_path.run),
    "fanout": ("2. MiniApp fan-out", fanout.run),
    "capacity": ("3. Capacity", capacity.run),
    "storm": ("4. Reconnect storm", storm.run),
    "scaleout": ("5. Dispatcher scale-out", scaleout.run),
}
# Bounds on a whole scenario (quick, full), far above a healthy run's length.
BUDGET_S = {
    "edge": (300, 1200),
    "fanout": (180, 400),
    "capacity": (240, 600),
    "storm": (180, 500),
    "scaleout": (300, 1500),
}


def machine() -> dict[str, Any]:
    """CPU count and model, memory, kernel, Python, descriptor limit and load."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def git_facts(root: Path) -> dict[str, Any]:
    """Commit and whether the tree has changes (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


async def run_one(key: str, sizes: Sizes, tmp: Path) -> ScenarioResult:
    """One scenario within its time bound; a failure becomes a result with an error."""
    title, scenario = SCENARIOS[key]
    bench = Bench(sizes, tmp)
    budget = BUDGET_S[key][0 if sizes.name == "quick" else 1]
    started = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            result = await scenario(bench)
    except Exception as err:
        traceback.print_exc()
        detail = f"{type(err).__name__}: {err}" if not isinstance(err, TimeoutError) else f"over {budget} s"
        result = ScenarioResult(key=key, title=title, setup="", error=detail)
    finally:
        await bench.close()
    result.extra["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


async def run(sizes: Sizes, only: list[str], json_path: Path | None, keep: bool = False) -> int:
    """Run the scenarios in `only`, print their tables and the goals, write JSON; 1 if any failed.

    Stores and process logs live in a temporary directory, removed at the end unless `keep`."""
    raise_fd_limit()  # the services inherit it: one descriptor per socket
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    meta = {
        **git_facts(ROOT),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": sizes.name,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine(),
    }
    host = meta["machine"]
    dirty = " (dirty)" if meta["dirty"] else ""
    print(f"ikiro benchmarks, {sizes.name} size, commit {meta['commit'][:12]}{dirty}")
    print(f"{host['cpu_count']} CPUs ({host['cpu_model']}), {host['memory_gib']} GiB, load {host['loadavg']}")
    results: list[ScenarioResult] = []
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ikiro-bench-"))
    try:
        for key in only:
            scenario_dir = tmp / key
            scenario_dir.mkdir()
            result = await run_one(key, sizes, scenario_dir)
            results.append(result)
            print(report.render(result), flush=True)
    finally:
        if keep:
            print(f"\nstores and logs kept in {tmp}")
        else:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print(report.summary(results))
    print(f"\ntotal {meta['elapsed_s']:.0f} s")
    if json_path is not None:
        document = {"meta": meta, "scenarios": {r.key: report.to_json(r) for r in results}}
        await asyncio.to_thread(json_path.write_bytes, orjson.dumps(document, option=orjson.OPT_INDENT_2))
        print(f"figures written to {json_path}")
    return 1 if any(r.error for r in results) else 0
