"""The edge side from outside (DESIGN sections 2-4): tokens from the contract text, the stack as
processes, sockets, `/edge/sync` and the dispatcher's NATS API."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from tests.harness.bus import JsonObj, assert_ok, request
from tests.harness.proc import NatsServer, Proc, Service, wait_until
from tests.harness.ws import Socket, connect

SECRET = "contract-secret-current-0123456789"
PREVIOUS_SECRET = "contract-secret-previous-9876543210"
OTHER_SECRET = "contract-secret-unrelated-5555555555"
TOKEN_MAX_AGE_S = 600
# Dispatcher and gateway limits, small so the time-based rules can be observed quickly.
ACK_TIMEOUT_S = 0.6
MAX_ATTEMPTS = 3
EXECUTION_TIMEOUT_S = 1.5
MAX_QUEUED_PER_AGENT = 5
SYNC_RATE_PER_MIN = 5
IDLE_TIMEOUT_S = 1.0

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
class EdgeStack:
    log_dir: Path
    broker: NatsServer
    dispatcher: Service
    gateway: Service  # ENVIRONMENT=development, EDGE_SECRET + EDGE_SECRET_PREVIOUS
    prod_gateway: Service  # ENVIRONMENT=production, default token age and sync rate, short idle timeout
    extra: list[Proc | NatsServer] = field(default_factory=list)

    async def start_service(self, module: str, env: dict[str, str]) -> Service:
        """A further process for one test; stopped with the stack if the test does not."""
        svc = Service(module, env, self.log_dir)
        self.extra.append(svc)
        svc.start()
        return await svc.ready()


# --- tokens and requests ------------------------------------------------------------------------


def make_token(
    agent_id: str, secret: str = SECRET, ts: int | str | None = None, signature: str | None = None
) -> str:
    """The HMAC token of DESIGN section 3, built from its text alone (`ts` as text: any timestamp
    field at all, signed)."""
    message = f"{agent_id}:+15551234567:{int(time.time()) if ts is None else ts}"
    sig = signature or hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(f"{message}:{sig}".encode()).decode()


def edge_headers(agent_id: str, token: str | None = None, header_id: str | None = None) -> dict[str, str]:
    return {
        "X-Edge-Agent-Id": agent_id if header_id is None else header_id,
        "Authorization": f"Bearer {make_token(agent_id) if token is None else token}",
    }


@contextlib.asynccontextmanager
async def edge_socket(
    base_ws: str,
    agent_id: str,
    token: str | None = None,
    header_id: str | None = None,
    query_id: str | None = None,
    compress: int = 0,
) -> AsyncIterator[Socket]:
    """An agent's socket on `/edge/ws`, closed on exit."""
    query = agent_id if query_id is None else query_id
    async with aiohttp.ClientSession() as http:
        ws = await connect(
            http,
            f"{base_ws}/edge/ws?edge_agent_id={query}",
            edge_headers(agent_id, token, header_id),
            compress,
        )
        try:
            yield ws
        finally:
            await ws.close()


async def ack(ws: Socket, command_id: str, status: str, error: str | None = None, **extra: Any) -> None:
    await ws.send("command_ack", {"command_id": command_id, "status": status, "error": error, **extra})


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def raw_upgrade(
    http: aiohttp.ClientSession, base_http: str, query_id: str | None, headers: dict[str, str]
) -> tuple[int, Any]:
    """A WebSocket upgrade by hand, to read a refused upgrade's status and JSON body."""
    all_headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **headers,
    }
    params = {} if query_id is None else {"edge_agent_id": query_id}
    async with http.get(
        f"{base_http}/edge/ws", params=params, headers=all_headers, timeout=aiohttp.ClientTimeout(total=5)
    ) as r:
        return r.status, _body(await r.text())


def assert_error_body(body: Any) -> None:
    """`{"error": {"code", "message"}}`, both non-empty strings."""
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body


def body_for(agent: str, **fields: Any) -> JsonObj:
    return {"edge_agent_id": agent, "last_command_id": None, "pending_events": [], "status": {}, **fields}


async def sync(
    http: aiohttp.ClientSession,
    base_http: str,
    agent_id: str,
    body: Any | None = None,
    token: str | None = None,
    header_id: str | None = None,
    raw: bytes | None = None,
    auth: bool = True,
) -> tuple[int, Any, dict[str, str]]:
    """POST /edge/sync with the contract's headers: status, JSON body (or text), headers."""
    headers = {**edge_headers(agent_id, token, header_id), "Content-Type": "application/json"}
    if not auth:
        del headers["Authorization"]
    encoded = raw if raw is not None else json.dumps(body or body_for(agent_id)).encode()
    # aiohttp warns about large raw bodies; a BytesIO payload still carries a Content-Length.
    data: bytes | io.BytesIO = io.BytesIO(encoded) if len(encoded) > 256 * 1024 else encoded
    async with http.post(
        f"{base_http}/edge/sync", data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
    ) as r:
        return r.status, _body(await r.text()), dict(r.headers)


async def submit(nc: NATS, agent_id: str, **fields: Any) -> JsonObj:
    body = {
        "edge_agent_id": agent_id,
        "command_type": "send_message_now",
        "payload": {"thread_id": "t1", "text": "hi"},
    }
    return await request(nc, "edge.commands.submit", {**body, **fields})


async def submit_ok(nc: NATS, agent_id: str, **fields: Any) -> str:
    command_id = assert_ok(await submit(nc, agent_id, **fields))["command_id"]
    assert isinstance(command_id, str)
    return command_id


async def get_command(nc: NATS, command_id: str) -> JsonObj:
    return assert_ok(await request(nc, "edge.commands.get", {"command_id": command_id}))


async def get_agent(nc: NATS, agent_id: str) -> JsonObj:
    return assert_ok(await request(nc, "edge.agents.get", {"edge_agent_id": agent_id}))


async def wait_state(nc: NATS, command_id: str, state: str, timeout: float = 5.0) -> JsonObj:
    """Poll `edge.commands.get` until the record is in `state`; the record."""
    record: JsonObj = {}

    async def reached() -> bool:
        nonlocal record
        record = await get_command(nc, command_id)
        return bool(record["state"] == state)

    try:
        await wait_until(reached, timeout)
    except TimeoutError:
        raise AssertionError(f"{command_id} never reached {state}; last record {record}") from None
    return record
