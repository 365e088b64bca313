"""The process contract (DESIGN sections 2 and 7): environment-only configuration, the default
audience, health, readiness and Prometheus metrics with low-cardinality labels."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.miniapp import join, make_token, new_session, new_user, open_socket, replica_env
from tests.harness.proc import NatsServer, Service, run_to_exit


async def test_missing_key_setting_exits_at_start_with_one_line_naming_it(
    broker: NatsServer, logs: Path
) -> None:
    env = {k: v for k, v in replica_env(broker.url).items() if k != "SUPABASE_JWT_SECRET"}
    code, lines = await run_to_exit("services.miniapp_gateway", env, logs)
    assert code != 0
    assert len(lines) == 1 and "SUPABASE_JWT_SECRET" in lines[0], lines


async def test_default_jwt_audience_is_authenticated(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    replica = await start_replica(JWT_AUDIENCE=None)
    browser = await open_socket(http, replica, new_session(), make_token(new_user(), aud="authenticated"))
    await browser.expect("connected")
    await browser.close()
    refused = await open_socket(http, replica, new_session(), make_token(new_user()))  # the suite's audience
    assert (await refused.expect_close())[0] == 4001


async def test_health_readiness_and_metrics(
    replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    replica = replicas[1]
    session = new_session()
    browser, connected = await join(http, replica, session)
    refused = await open_socket(http, replica, session, make_token(connected["user_id"], aud="other"))
    assert (await refused.expect_close())[0] == 4001
    await browser.send("state_update", {"patch": {"m": 1}})
    await browser.expect("state_update")
    for path in ("/healthz", "/readyz"):
        async with http.get(replica.http + path) as response:
            assert response.status == 200
    async with http.get(replica.http + "/metrics") as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    # No id of a session, user or connection is ever a label value.
    for identifier in (session, connected["user_id"], connected["connection_id"]):
        assert identifier not in text
    assert any(n.endswith("_total") and "handshake" in n for n in names)
    for part in ("sockets_open", "fanout_seconds", "reconnects_total"):
        assert any(part in n for n in names), part
