"""Child processes of the soak: started in their own session, tied to the soak's life, always reaped.

Every process the soak starts (nats-server nodes, services, agent workers) is a `Child`. It runs in
its own session, so a Ctrl-C reaches only the soak, which then stops them all in order; and it gets
SIGKILL from the kernel if the soak itself dies (PR_SET_PDEATHSIG), so none can outlive a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


class SoakError(RuntimeError):
    """The soak could not do what it set out to (a process would not start, a bound passed)."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One named process; every start is a new incarnation with its own log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.log_dir = log_dir
        self.incarnation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.logs: list[Path] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.running:
            raise SoakError(f"{self.name} is running already")
        self.incarnation += 1
        log = self.log_dir / f"{self.name}.{self.incarnation}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.paused = False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it at once (a killed process exits at once)."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired as err:
            raise SoakError(f"{self.name} survived SIGKILL") from err
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit status once it has exited, or None when it is still running after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.proc is not None and self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode if self.proc is not None else None

    def stop_now(self) -> None:
        """The last word at the end of a run or on an error: continue if paused, kill, reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def log_lines_with(self, needle: str, limit: int) -> list[str]:
        """Lines of every incarnation's log that contain `needle` (evidence for the verdict)."""
        found: list[str] = []
        for path in self.logs:
            try:
                with path.open("r", errors="replace") as f:
                    for line in f:
                        if needle in line:
                            found.append(f"{path.name}: {line.rstrip()}")
                            if len(found) >= limit:
                                return found
            except OSError:
                continue
        return found
