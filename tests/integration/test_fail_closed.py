"""Fail closed (DESIGN section 2): a service started with nothing set is a production one; no built-in
or short secret is accepted outside development, and the development conveniences (the published
edge secret, the token-minting dev page, loopback-only listening) exist only when asked for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import aiohttp
import pytest

from shared.auth import DEV_EDGE_SECRET
from tests.harness import edge
from tests.harness.proc import NatsServer, Proc, Service, clean_env, free_port, run_to_exit, wait_until

LONG_SECRET = "fail-closed-test-secret-0123456789abcdef"
SHORT_SECRET = "x" * 31

# (module, what is set, the setting the one-line refusal must name)
REFUSED_STARTS = {
    "edge, nothing set": ("edge_gateway", {}, "EDGE_SECRET"),
    "edge, staging without a secret": ("edge_gateway", {"ENVIRONMENT": "staging"}, "EDGE_SECRET"),
    "edge, 31-byte secret": ("edge_gateway", {"EDGE_SECRET": SHORT_SECRET}, "EDGE_SECRET"),
    "edge, 31-byte secret in staging": (
        "edge_gateway",
        {"ENVIRONMENT": "staging", "EDGE_SECRET": SHORT_SECRET},
        "EDGE_SECRET",
    ),
    "edge, the published dev secret in staging": (
        "edge_gateway",
        {"ENVIRONMENT": "staging", "EDGE_SECRET": DEV_EDGE_SECRET},
        "EDGE_SECRET",
    ),
    "edge, 31-byte previous secret": (
        "edge_gateway",
        {"EDGE_SECRET": LONG_SECRET, "EDGE_SECRET_PREVIOUS": SHORT_SECRET},
        "EDGE_SECRET_PREVIOUS",
    ),
    "miniapp, nothing set": ("miniapp_gateway", {}, "SUPABASE_JWT_SECRET"),
    "miniapp, 31-byte JWT secret": (
        "miniapp_gateway",
        {"SUPABASE_JWT_SECRET": SHORT_SECRET},
        "SUPABASE_JWT_SECRET",
    ),
    "miniapp, dev page on in production": (
        "miniapp_gateway",
        {"SUPABASE_JWT_SECRET": LONG_SECRET, "MINIAPP_DEV_PAGE": "true"},
        "MINIAPP_DEV_PAGE",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_STARTS))
async def test_a_start_without_real_secrets_outside_development_exits_with_one_line(
    broker: NatsServer, logs: Path, case: str
) -> None:
    module, settings, named = REFUSED_STARTS[case]
    env = {"ENVIRONMENT": None, "NATS_URL": broker.url, "PORT": "0", **settings}
    code, lines = await run_to_exit(f"services.{module}", env, logs)
    assert code == 2
    assert len(lines) == 1 and named in lines[0], lines
    assert SHORT_SECRET not in lines[0] and LONG_SECRET not in lines[0]


async def test_with_nothing_but_real_secrets_set_no_dev_convenience_is_served(
    broker: NatsServer, logs: Path, http: aiohttp.ClientSession, agent: str
) -> None:
    """ENVIRONMENT unset is production: the legacy raw secret is refused (and the published dev
    secret is no token at all); the dev page and its token minting are not served."""
    unset = {"ENVIRONMENT": None, "NATS_URL": broker.url}
    gateway = Service("services.edge_gateway", {**unset, "EDGE_SECRET": LONG_SECRET}, logs)
    replica = Service("services.miniapp_gateway", {**unset, "SUPABASE_JWT_SECRET": LONG_SECRET}, logs)
    for svc in (gateway, replica):
        svc.start()
    try:
        await gateway.ready()
        await replica.ready()
        for bearer in (LONG_SECRET, DEV_EDGE_SECRET):
            status, _ = await edge.raw_upgrade(http, gateway.http, agent, edge.edge_headers(agent, bearer))
            assert status == 401
        good = edge.make_token(agent, secret=LONG_SECRET)
        status, _ = await edge.raw_upgrade(http, gateway.http, agent, edge.edge_headers(agent, good))
        assert status == 101
        for path in ("/dev/token?user_id=alice", "/dev/miniapp/s1"):
            async with http.get(f"{replica.http}{path}") as r:
                assert r.status == 404, path
    finally:
        for svc in (gateway, replica):
            svc.stop()


@pytest.mark.parametrize(
    ("environment", "listens_on"), [(None, "0.0.0.0"), ("staging", "0.0.0.0"), ("development", "127.0.0.1")]
)
async def test_host_defaults_to_every_interface_except_in_development(
    broker: NatsServer, logs: Path, environment: str | None, listens_on: str
) -> None:
    port = free_port()
    env = clean_env(ENVIRONMENT=environment, NATS_URL=broker.url, PORT=str(port), LOG_LEVEL="INFO")
    proc = Proc("dispatcher", [sys.executable, "-m", "services.command_dispatcher"], env, logs)
    proc.start()
    try:
        listening = re.compile(rf"listening .*host={re.escape(listens_on)} port={port}")
        await wait_until(lambda: bool(listening.search(proc.output())), 20, what=f"listening on {listens_on}")
    finally:
        proc.stop()
