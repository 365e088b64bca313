"""Real processes for tests: services as subprocesses, bounded waits (the broker is shared.natsserver)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from devtools.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parent.parent


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `condition` until it holds; fail with TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class ServiceProcess:
    """`python -m services.<name>` as a real process, for kill and SIGTERM tests."""

    def __init__(self, module: str, port: int, env: dict[str, str]) -> None:
        self.module = module
        self.port = port
        self.env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1", "LOG_FORMAT": "text"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=None,
        )
        await wait_until(self.ready, timeout=timeout, interval=0.05)

    async def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}")
        return await http_status(f"{self.base_url}/readyz") == 200

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def http_status(url: str) -> int | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


__all__ = ["ROOT", "NatsServer", "ServiceProcess", "free_port", "http_status", "wait_until"]
