"""`make run`: a local NATS with JetStream plus every service, until Ctrl-C.

Data lives under `.run/` (git-ignored). Each service is a real process configured only by
environment variables, exactly as it runs in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from devtools.natsserver import NatsServer
from shared.auth import DEV_EDGE_SECRET, generate_edge_token
from shared.supabase import mint_dev_token

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
DEV_JWT_SECRET = "dev-supabase-jwt-secret-at-least-32-bytes"
SAMPLE_AGENT = "dev-agent-1"
SAMPLE_SESSION = "dev-session-1"
SAMPLE_USERS = ("dev-user-1", "dev-user-2")


@dataclass
class Service:
    module: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def wait_ready(service: Service, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert service.proc is not None
            if service.proc.poll() is not None:
                raise SystemExit(f"{service.module} exited with {service.proc.returncode}; see its log above")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{service.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{service.module} did not become ready within {timeout_s:.0f}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def banner(services: list[Service], nats_url: str, edge_secret: str, extras: list[str]) -> str:
    ikiro = Path(sys.executable).parent / "ikiro"
    token = generate_edge_token(SAMPLE_AGENT, "+15550100", edge_secret)
    gateway = services[1].url
    lines = [
        "",
        "Ikiro realtime stack is up (Ctrl-C stops everything).",
        f"  NATS (JetStream)     {nats_url}",
        *(f"  {s.module.split('.')[-1]:<20} {s.url}  (/healthz /readyz /metrics)" for s in services),
        f"  edge WebSocket       {gateway.replace('http', 'ws', 1)}/edge/ws?edge_agent_id={SAMPLE_AGENT}",
        "",
        f"  dev EDGE_SECRET      {edge_secret}",
        f"  edge token ({SAMPLE_AGENT}): {token}",
        *extras,
        "",
        "Try it, in another terminal:",
        f"  {ikiro} sim-agent --agent {SAMPLE_AGENT} --url {gateway} --secret {edge_secret}",
        f"  {ikiro} submit --nats {nats_url} --agent {SAMPLE_AGENT} --type send_message_now "
        """--payload '{"thread_id": "t1", "text": "hello from make run"}'""",
        "",
    ]
    return "\n".join(lines)


def miniapp_lines(url: str, jwt_secret: str) -> list[str]:
    jwt, other = (mint_dev_token(user, jwt_secret, "authenticated", 3600) for user in SAMPLE_USERS)
    ws = url.replace("http", "ws", 1)
    page = f"{url}/dev/miniapp/{SAMPLE_SESSION}"
    return [
        f"  dev MiniApp JWT ({SAMPLE_USERS[0]}, 1 h): {jwt}",
        f"  MiniApp WebSocket    {ws}/ws/miniapp/{SAMPLE_SESSION}?token={jwt}",
        "",
        "Open the live MiniApp dev page in two tabs (two users; the page refreshes its token itself):",
        f"  {page}?token={jwt}",
        f"  {page}?token={other}",
    ]


async def run_stack() -> None:
    RUN_DIR.mkdir(exist_ok=True)
    nats_port = int(os.environ.get("NATS_PORT", "4222"))
    if not port_free(nats_port):
        raise SystemExit(f"port {nats_port} is taken: stop what uses it or set NATS_PORT")
    nats_url = f"nats://127.0.0.1:{nats_port}"
    edge_secret = os.environ.get("EDGE_SECRET", DEV_EDGE_SECRET)
    jwt_secret = os.environ.get("SUPABASE_JWT_SECRET", DEV_JWT_SECRET)
    base_env = {**os.environ, "NATS_URL": nats_url, "ENVIRONMENT": "development", "LOG_FORMAT": "text"}
    services = [
        Service("services.command_dispatcher", 8082, {}),
        Service("services.edge_gateway", 8080, {"EDGE_SECRET": edge_secret}),
        Service("services.miniapp_gateway", 8081, {"SUPABASE_JWT_SECRET": jwt_secret}),
    ]
    for service in services:
        if not port_free(service.port):
            raise SystemExit(f"port {service.port} ({service.module}) is taken")

    broker = NatsServer(RUN_DIR / "jetstream", port=nats_port, log=RUN_DIR / "nats-server.log")
    await asyncio.to_thread(broker.start)
    try:
        for service in services:
            service.proc = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", service.module],
                cwd=ROOT,
                env={**base_env, **service.env, "PORT": str(service.port), "HOST": "127.0.0.1"},
                start_new_session=True,
            )
        for service in services:
            await wait_ready(service)
        print(banner(services, nats_url, edge_secret, miniapp_lines(services[2].url, jwt_secret)), flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        watch = asyncio.create_task(_watch(services, stopped))
        await stopped.wait()
        watch.cancel()
    finally:
        print("\nstopping...", flush=True)
        for service in reversed(services):
            await asyncio.to_thread(stop, service.proc)
        await asyncio.to_thread(broker.stop)
        print("stopped.", flush=True)


async def _watch(services: list[Service], stopped: asyncio.Event) -> None:
    """A service that dies takes the stack down, rather than leaving it half up."""
    while not stopped.is_set():
        for service in services:
            if service.proc is not None and service.proc.poll() is not None:
                print(f"{service.module} exited with {service.proc.returncode}", flush=True)
                stopped.set()
        await asyncio.sleep(0.5)
