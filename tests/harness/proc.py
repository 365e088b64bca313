"""Real processes: `nats-server` on a free port, services as `python -m services.<name>`, one poller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp

from devtools.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[2]
# Nothing leaks in from the developer's shell but these.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")

__all__ = ["ROOT", "NatsServer", "Proc", "Service", "free_port", "http_status", "run_to_exit", "wait_until"]


async def wait_until(
    condition: Callable[[], Awaitable[object]] | Callable[[], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "",
) -> None:
    """Poll a sync or async `condition` until it is truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout}s: {what or condition}")
        await asyncio.sleep(interval)


async def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def clean_env(**extra: str | None) -> dict[str, str]:
    """The environment of a service process: the suite's defaults and `extra` (a None leaves it unset)."""
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    # The services fail closed (production) unless told; a test that means production says so.
    defaults = {"ENVIRONMENT": "development", "LOG_FORMAT": "text", "LOG_LEVEL": "WARNING"}
    merged = {**env, "PYTHONUNBUFFERED": "1", **defaults, **extra}
    return {k: v for k, v in merged.items() if v is not None}


class Proc:
    """One real process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        await wait_until(lambda: not self.alive(), timeout, what=f"{self.name} exits")
        assert self.proc is not None and self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class Service(Proc):
    """`python -m <module>` on a free port, configured by environment variables only."""

    def __init__(self, module: str, env: Mapping[str, str | None], log_dir: Path) -> None:
        self.port = free_port()
        full = clean_env(**env, HOST="127.0.0.1", PORT=str(self.port))
        super().__init__(module.rsplit(".", 1)[-1], [sys.executable, "-m", module], full, log_dir)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 25.0) -> Service:
        """Until `/readyz` answers 200; fails at once if the process exits."""

        async def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            return await http_status(f"{self.http}/readyz") == 200

        await wait_until(up, timeout, what=f"{self.name} /readyz 200")
        return self


async def run_to_exit(
    module: str, env: Mapping[str, str | None], log_dir: Path, timeout: float = 20
) -> tuple[int, list[str]]:
    """Run a service that is expected to exit by itself: its exit code and non-empty output lines."""
    proc = Proc(module, [sys.executable, "-m", module], clean_env(**env), log_dir)
    proc.start()
    code = await proc.wait_exit(timeout)
    return code, [line for line in proc.output().splitlines() if line.strip()]
