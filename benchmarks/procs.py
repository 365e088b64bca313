"""The processes of a benchmark: start, readiness, CPU and RSS from `/proc`, and a stop that always happens.

Every process the suite starts (services, bare baselines, load generators) is a `Proc` in one
`Fleet`; the broker and the orchestrator itself join it as `Watched` entries, so a phase's CPU
table covers every process that did work. CPU is utime + stime of `/proc/<pid>/stat`, in ms.
Children are started in their own session (a Ctrl-C reaches only the orchestrator, which stops
them in order) and with a parent-death signal, so none outlives an orchestrator that was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from . import control

Group = Literal["product", "baseline", "broker", "loadgen"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


class BenchError(RuntimeError):
    """A phase that cannot give a figure: a process died, a bound passed, a generator refused."""


def cpu_ms_of(pid: int) -> float | None:
    """utime + stime of `pid` in ms, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: the fields start after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def machine_cpu_ms() -> dict[str, float]:
    """CPU time of the whole machine (every core) so far, in ms, by kind: `tasks` (user and system
    time of all processes, ours or not), `irq` (interrupts and softirqs, where loopback TCP is
    partly handled) and `steal` (time the hypervisor gave to other guests)."""
    fields = Path("/proc/stat").read_bytes().split(b"\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) * 1000.0 / CLK_TCK for f in fields[:8])
    return {"tasks": user + nice + system, "irq": irq + softirq, "steal": steal}


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (whole machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True)).get("ListenOverflows", 0))
    return 0


def rss_kib_of(pid: int) -> int | None:
    """Resident set size of `pid` in KiB, or None once it is gone."""
    try:
        statm = Path(f"/proc/{pid}/statm").read_bytes()
    except OSError:
        return None
    return int(statm.split()[1]) * PAGE_BYTES // 1024


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with the orchestrator, whatever kills it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Watched:
    """A process whose CPU and memory a phase reads: started here, or not (the broker, ourselves)."""

    def __init__(self, name: str, group: Group, pid: int | None = None) -> None:
        self.name = name
        self.group = group
        self._pid = pid
        self._last_cpu_ms = 0.0

    @property
    def pid(self) -> int | None:
        return self._pid

    def cpu_ms(self) -> float:
        """CPU so far; the last reading once the process is gone (a killed gateway keeps its figure)."""
        if self.pid is not None and (now := cpu_ms_of(self.pid)) is not None:
            self._last_cpu_ms = now
        return self._last_cpu_ms

    def rss_kib(self) -> int:
        """Resident set size now, in KiB."""
        rss = rss_kib_of(self.pid) if self.pid is not None else None
        if rss is None:
            raise BenchError(f"{self.name} is not running")
        return rss


class Proc(Watched):
    """A child process with stdout and stderr in a log file, ready when `/readyz` answers 200."""

    controlled = False  # True: stdin and stdout are the control channel (`Generator`)
    ready_path = "/readyz"

    def __init__(
        self,
        name: str,
        group: Group,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        log_dir: Path,
        port: int | None = None,
    ) -> None:
        super().__init__(name, group)
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start the process (its readiness is awaited separately)."""
        pipe = asyncio.subprocess.PIPE
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=pipe if self.controlled else asyncio.subprocess.DEVNULL,
                stdout=pipe if self.controlled else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_child_setup,
                limit=control.MAX_LINE_BYTES,
            )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll `GET /readyz` (`ready_path`) until 200; fail at once if the process exits."""
        if self.port is None:
            raise BenchError(f"{self.name} has no port to poll")
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise BenchError(f"{self.name} exited during start-up: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} not ready within {timeout_s:.0f} s: {self.log_tail()}")

    async def metrics(self) -> str:
        """The process's Prometheus exposition."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r,
        ):
            return await r.text()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process's log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n    ".join(["", *text[-lines:]]) if text else "(empty log)"

    def kill(self) -> None:
        """SIGKILL now (a crash, as far as everyone else can tell)."""
        if self.proc and self.proc.returncode is None:
            self.cpu_ms()  # keep the last reading
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; always reaps."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.cpu_ms()
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.kill()
        await self.proc.wait()


class Generator(Proc):
    """A load generator driven over its stdin/stdout with JSON lines (see `control`)."""

    controlled = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = asyncio.Lock()  # one op at a time: replies come back in order

    async def start(self) -> None:
        """Start the generator and wait for its `ready` line."""
        await super().start()
        await self._read("start-up", 60.0)

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """A generator is ready once it has said so on stdout, which `start` waits for."""

    async def call(self, op: str, timeout_s: float, **args: Any) -> dict[str, Any]:
        """Send one op and wait for its one reply; raise `BenchError` on a refusal or timeout."""
        assert self.proc is not None and self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(orjson.dumps({"op": op, **args}) + b"\n")
            await self.proc.stdin.drain()
            return await self._read(op, timeout_s)

    async def _read(self, op: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except TimeoutError:
            raise BenchError(f"{self.name}: no answer to {op} within {timeout_s:.0f} s") from None
        if not line:
            raise BenchError(f"{self.name} exited during {op}: {self.log_tail()}")
        reply: dict[str, Any] = orjson.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"{self.name}: {op} failed: {reply.get('error')}")
        return reply

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.proc is not None and self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 3.0)
        await super().stop(grace_s)


@dataclass(frozen=True, slots=True)
class Sample:
    """Each process's CPU ms at one instant, with the wall clock and the machine's CPU by kind."""

    at: float
    cpu_ms: dict[str, float]
    machine_ms: dict[str, float]


class Fleet:
    """Every process of a run: measured together, stopped together."""

    def __init__(self) -> None:
        self.members: list[Watched] = []

    def watch(self, member: Watched) -> Watched:
        """Measure a process this fleet did not start (the broker, the orchestrator)."""
        self.members.append(member)
        return member

    async def start(self, proc: Proc, ready_timeout_s: float = 30.0) -> None:
        """Start a process of this fleet and wait until it is ready."""
        self.members.append(proc)
        await proc.start()
        await proc.wait_ready(ready_timeout_s)

    def sample(self) -> Sample:
        """Every member's CPU so far, and the machine's."""
        return Sample(time.monotonic(), {m.name: m.cpu_ms() for m in self.members}, machine_cpu_ms())

    def groups(self) -> dict[str, Group]:
        """Each member's group, by name."""
        return {m.name: m.group for m in self.members}

    def generators(self) -> Iterator[Generator]:
        """The load generators still running."""
        return (m for m in self.members if isinstance(m, Generator) and m.running)

    async def stop(self, procs: Sequence[Proc] | None = None) -> None:
        """Stop these processes (None: every one this fleet started), together, and forget them."""
        targets = list(procs) if procs is not None else [m for m in self.members if isinstance(m, Proc)]
        await asyncio.gather(*(p.stop() for p in reversed(targets)), return_exceptions=True)
        stopped = {id(p) for p in targets}
        self.members = [m for m in self.members if id(m) not in stopped]
