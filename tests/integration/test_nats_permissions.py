"""NATS users per service, least privilege (`shared/protocol/permissions.py`), on a real nats-server
with exactly those grants: the whole stack works with them, and no service (nor a backend) can
publish or subscribe what belongs to another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS

from devtools.natsserver import nats_server_binary
from devtools.permissions import server_config
from tests.harness import miniapp
from tests.harness.bus import assert_ok, request
from tests.harness.edge import ack, edge_socket, make_token, wait_state
from tests.harness.proc import Proc, Service, free_port, wait_until
from tests.integration import apps

PASSWORD_ENV = "NATS_PASSWORD_"
SERVICES = {
    "command-dispatcher": "services.command_dispatcher",
    "edge-gateway": "services.edge_gateway",
    "miniapp-gateway": "services.miniapp_gateway",
}


def password(user: str) -> str:
    return f"pw-{user}"


@dataclass
class SecuredStack:
    port: int
    services: dict[str, Service]

    def url(self, user: str) -> str:
        return f"nats://{user}:{password(user)}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory, logs: Path) -> AsyncIterator[SecuredStack]:
    root = tmp_path_factory.mktemp("secured-nats")
    port = free_port()
    config = root / "nats.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{root / "store"}" }}\n'
        + server_config(PASSWORD_ENV)
    )
    users = [*SERVICES, "backend"]
    env = {f"{PASSWORD_ENV}{u.upper().replace('-', '_')}": password(u) for u in users}
    broker = Proc("nats-secured", [nats_server_binary(), "-c", str(config)], env, logs)
    stack = SecuredStack(port, {})
    broker.start()
    try:
        for user, module in SERVICES.items():
            service = Service(
                module,
                {
                    "NATS_URL": stack.url(user),
                    "EDGE_SECRET": apps.EDGE_SECRET,
                    "SUPABASE_JWT_SECRET": miniapp.SECRET,
                    "JWT_AUDIENCE": miniapp.AUDIENCE,
                },
                logs,
            )
            service.start()
            stack.services[user] = service
        await asyncio.gather(*(s.ready() for s in stack.services.values()))
        yield stack
    finally:
        for service in stack.services.values():
            service.stop()
        broker.stop()
    assert "Permissions Violation" not in "".join(s.output() for s in stack.services.values())


@pytest.fixture
async def backend(secured: SecuredStack) -> AsyncIterator[NATS]:
    client = await nats.connect(secured.url("backend"))
    yield client
    await client.close()


async def test_the_stack_works_with_only_its_own_grants(
    secured: SecuredStack, backend: NATS, http: aiohttp.ClientSession, agent: str
) -> None:
    gateway = secured.services["edge-gateway"]
    async with edge_socket(gateway.ws, agent, token=make_token(agent, secret=apps.EDGE_SECRET)) as ws:
        reply = assert_ok(
            await request(
                backend,
                "edge.commands.submit",
                {
                    "edge_agent_id": agent,
                    "command_type": "send_message_now",
                    "payload": {"thread_id": "t", "text": "x"},
                },
            )
        )
        command_id = reply["command_id"]
        assert (await ws.expect("command"))["command_id"] == command_id
        for status in ("received", "executing", "completed"):
            await ack(ws, command_id, status)
        await wait_state(backend, command_id, "completed")
    replica = secured.services["miniapp-gateway"]
    session = miniapp.new_session()
    assert_ok(
        await request(backend, "miniapp.sessions.configure", {"session_id": session, "members": ["u1"]})
    )
    browser, _ = await miniapp.join(http, replica, session, "u1")
    await browser.send("state_update", {"patch": {"a": 1}})
    assert (await browser.expect("state_update"))["version"] == 1


FORBIDDEN_PUBLISH = {
    "edge-gateway": [
        "edge.commands.submit",
        "edge.lifecycle.a.b",
        "$KV.EDGE_COMMANDS.x",
        "$JS.API.STREAM.DELETE.KV_EDGE_COMMANDS",
        "miniapp.sessions.state_update",
    ],
    "miniapp-gateway": [
        "edge.commands.submit",
        "edge.deliver.a",
        "$KV.EDGE_AGENTS.presence.a",
        "edge.acks.submit",
    ],
    "command-dispatcher": ["miniapp.sessions.configure", "$KV.MINIAPP_SESSIONS.s", "edge.presence.a"],
    "backend": [
        "$KV.EDGE_COMMANDS.x",
        "edge.deliver.a",
        "edge.acks.submit",
        "$KV.MINIAPP_SESSIONS.s",
        "$JS.API.STREAM.DELETE.KV_EDGE_COMMANDS",
    ],
}
FORBIDDEN_SUBSCRIBE = {
    "edge-gateway": ["edge.lifecycle.>", "edge.commands.submit"],
    "miniapp-gateway": ["edge.deliver.*", "edge.lifecycle.>"],
    "command-dispatcher": ["miniapp.actions.*", "edge.deliver.*"],
    "backend": ["edge.deliver.*", "edge.acks.submit", "$KV.EDGE_COMMANDS.>"],
}


@pytest.mark.parametrize("user", sorted(FORBIDDEN_PUBLISH))
async def test_a_user_cannot_publish_or_subscribe_what_belongs_to_another(
    secured: SecuredStack, user: str
) -> None:
    refused: list[str] = []

    async def on_error(err: Exception) -> None:
        refused.append(str(err))

    client = await nats.connect(secured.url(user), error_cb=on_error, max_reconnect_attempts=0)
    try:
        for subject in FORBIDDEN_PUBLISH[user]:
            await client.publish(subject, b"{}")
        for subject in FORBIDDEN_SUBSCRIBE[user]:
            await client.subscribe(subject)
        await client.flush()
        wanted = len(FORBIDDEN_PUBLISH[user]) + len(FORBIDDEN_SUBSCRIBE[user])
        await wait_until(lambda: len(refused) >= wanted, 5, what="every forbidden subject refused")
    finally:
        await client.close()
    for subject in [*FORBIDDEN_PUBLISH[user], *FORBIDDEN_SUBSCRIBE[user]]:
        # nats-py lower-cases the server's error text
        assert any(f'"{subject.lower()}"' in text for text in refused), (subject, refused)
    assert all("ermissions violation" in text.lower() for text in refused), refused
