"""The services under test, as processes: 2 dispatchers, 2 edge gateways, 2 MiniApp gateways.

Each runs as `python -m services.<name>` from the product root, configured only by environment
variables, on the same port for its whole run (a load balancer's fixed backend). The timer
settings are shortened so a 60 s settle window sees every command reach a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from devtools.natsserver import free_port

from .procs import Child, SoakError

READY_TIMEOUT_S = 30.0
RESTART_BOUND_S = 60.0
EXIT_LOG_LINES = 15
SHUTDOWN_GRACE_S = 5.0
# Dispatcher timers (DESIGN section 4 defaults: 10 s, 300 s, 5, 1800 s), shortened so that every
# command reaches a final state inside the settle window: an ack that died with a gateway shows
# as `execution_timeout` 20 s later, a lost send is repeated after 3 s.
DISPATCHER_TIMING = {
    "ACK_TIMEOUT_S": "3",
    "MAX_ACK_TIMEOUT_S": "12",
    "MAX_ATTEMPTS": "5",
    "EXECUTION_TIMEOUT_S": "20",
}
# Every variable a service reads that the soak sets; inherited values of these are dropped.
_SERVICE_VARS = re.compile(
    r"^(NATS_|ENVIRONMENT$|HOST$|PORT$|LOG_|SHUTDOWN_|JETSTREAM_|EDGE_|SUPABASE_|JWT_|MINIAPP_|"
    r"ACK_|MAX_|EXECUTION_|CONNECT_GRACE|FAILOVER_|DELIVER_|SYNC_|IDLE_|SEND_|OUTBOX_|UPSTREAM_|"
    r"HEARTBEAT_|PRESENCE_|SESSION_|RATE_|WRITE_|WS_)"
)

KINDS = ("command_dispatcher", "edge_gateway", "miniapp_gateway")
# Dispatchers beyond the running ones, parked until a fault scales the tier up to them.
SPARE_DISPATCHERS = 2
SHORT = {"command_dispatcher": "dispatcher", "edge_gateway": "edge", "miniapp_gateway": "miniapp"}


@dataclass(frozen=True, slots=True)
class Secrets:
    edge_secret: str
    jwt_secret: str

    @classmethod
    def fresh(cls) -> Secrets:
        return cls(edge_secret=secrets.token_hex(16), jwt_secret=secrets.token_hex(32))


class Service:
    """One replica of a service; `child` is its process, restarted on the same port."""

    def __init__(self, kind: str, index: int, child: Child, port: int, http: aiohttp.ClientSession) -> None:
        self.kind = kind
        self.index = index
        self.child = child
        self.port = port
        self.http = http
        self.held = False  # a fault has it down on purpose: the supervisor leaves it alone
        self.on_exit: Callable[[Service, str], None] = lambda service, why: None

    @property
    def name(self) -> str:
        return self.child.name

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=1.0)
            async with self.http.get(f"{self.base}/readyz", timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if not self.child.running:
                raise SoakError(f"{self.name} exited with {self.child.proc and self.child.proc.returncode}")
            if await self.ready():
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise SoakError(f"{self.name} was not ready within {timeout_s:.0f} s")

    async def gauge(self, metric: str) -> float | None:
        """One unlabelled gauge of its `/metrics`, or None when it does not answer."""
        try:
            timeout = aiohttp.ClientTimeout(total=1.0)
            async with self.http.get(f"{self.base}/metrics", timeout=timeout) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for line in text.splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[1])
        return None

    async def restart(self) -> float:
        """Start a new incarnation and wait until it is ready; the seconds that took. One that exits
        before it is ready is noted (`on_exit`) and started again after a doubling back-off, as
        Kubernetes would, until `RESTART_BOUND_S` has passed."""
        started = time.monotonic()
        backoff = 0.5
        self.child.start()
        while True:
            try:
                await self.wait_ready(max(1.0, RESTART_BOUND_S - (time.monotonic() - started)))
                return time.monotonic() - started
            except SoakError:
                if self.child.running or time.monotonic() - started > RESTART_BOUND_S:
                    raise
                self.on_exit(self, "exited while starting")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.child.start()

    async def terminate(self) -> int | None:
        """SIGTERM, and wait for the graceful exit the contract promises within the grace."""
        self.child.signal(signal.SIGTERM)
        return await self.child.wait_exit(SHUTDOWN_GRACE_S + 10.0)


class Stack:
    def __init__(
        self,
        root: Path,
        nats_url: str,
        log_dir: Path,
        http: aiohttp.ClientSession,
        keys: Secrets,
        replicas: int = 2,
    ) -> None:
        self.root = root
        self.keys = keys
        python = root / ".venv" / "bin" / "python"
        self.python = str(python) if python.exists() else "python3"
        base = {k: v for k, v in os.environ.items() if not _SERVICE_VARS.match(k)}
        base.update(
            NATS_URL=nats_url,
            HOST="127.0.0.1",
            ENVIRONMENT="development",
            JETSTREAM_REPLICAS="3",
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S),
            PYTHONUNBUFFERED="1",
        )
        extra = {
            "command_dispatcher": DISPATCHER_TIMING,
            "edge_gateway": {"EDGE_SECRET": keys.edge_secret},
            "miniapp_gateway": {
                "SUPABASE_JWT_SECRET": keys.jwt_secret,
                "MINIAPP_SESSION_ACCESS": "open",
                "MINIAPP_DEV_PAGE": "false",
            },
        }
        self.services: dict[str, list[Service]] = {}
        self.exits: list[dict[str, Any]] = []  # replicas that exited without a fault: crashes
        self.replicas = replicas
        for kind in KINDS:
            self.services[kind] = []
            spares = SPARE_DISPATCHERS if kind == "command_dispatcher" else 0
            for index in range(1, replicas + spares + 1):
                port = free_port()
                env = {**base, **extra[kind], "PORT": str(port)}
                argv = [self.python, "-m", f"services.{kind}"]
                child = Child(f"{SHORT[kind]}-{index}", argv, env, root, log_dir)
                service = Service(kind, index, child, port, http)
                service.on_exit = self.note_exit
                self.services[kind].append(service)

    @property
    def dispatchers(self) -> list[Service]:
        return self.services["command_dispatcher"]

    @property
    def edges(self) -> list[Service]:
        return self.services["edge_gateway"]

    @property
    def miniapps(self) -> list[Service]:
        return self.services["miniapp_gateway"]

    def all(self) -> list[Service]:
        return [s for kind in KINDS for s in self.services[kind]]

    async def start(self) -> None:
        """Dispatchers first (they create the streams and buckets), then the gateways; the spare
        dispatchers stay parked (held, never started)."""
        for spare in self.dispatchers[self.replicas :]:
            spare.held = True
        for group in (self.dispatchers[: self.replicas], self.edges + self.miniapps):
            await asyncio.gather(*(service.restart() for service in group))

    def note_exit(self, service: Service, why: str) -> None:
        proc = service.child.proc
        log = service.child.logs[-1] if service.child.logs else None
        tail: list[str] = []
        if log is not None:
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").splitlines()[-EXIT_LOG_LINES:]
        self.exits.append(
            {
                "service": service.name,
                "incarnation": service.child.incarnation,
                "why": why,
                "exit_code": proc.returncode if proc is not None else None,
                "at": time.time(),
                "log_tail": tail,
            }
        )

    async def supervise(self) -> None:
        """Restart any replica that died without a fault holding it (a crash), noting each one."""
        restarts: set[asyncio.Task[None]] = set()

        async def restart(service: Service) -> None:
            try:
                await service.restart()
            except SoakError as err:
                self.note_exit(service, f"not restarted: {err}")
            finally:
                service.held = False

        try:
            while True:
                await asyncio.sleep(0.5)
                for service in self.all():
                    if service.held or service.child.running or service.child.proc is None:
                        continue
                    self.note_exit(service, "exited on its own")
                    service.held = True
                    task = asyncio.create_task(restart(service))
                    restarts.add(task)
                    task.add_done_callback(restarts.discard)
        finally:
            for task in list(restarts):
                task.cancel()
            await asyncio.gather(*restarts, return_exceptions=True)

    def stop(self) -> None:
        for service in self.all():
            service.child.stop_now()

    def log_lines_with(self, needle: str, limit: int = 20) -> list[str]:
        found: list[str] = []
        for service in self.all():
            found += service.child.log_lines_with(needle, limit - len(found))
            if len(found) >= limit:
                break
        return found
