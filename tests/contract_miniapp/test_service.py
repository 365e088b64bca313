"""The process contract (DESIGN sections 2 and 7): environment-only configuration, health,
readiness and Prometheus metrics with low-cardinality labels."""

from __future__ import annotations

import asyncio
import re
import sys

import aiohttp

from tests.contract_miniapp.support import ROOT, Replica, join, make_token, new_session, open_socket

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ")


async def test_missing_key_setting_exits_at_start_with_one_line_naming_it(
    replicas: tuple[Replica, Replica],
) -> None:
    env = replicas[0].environment()
    del env["SUPABASE_JWT_SECRET"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.miniapp_gateway",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode not in (0, None)
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "SUPABASE_JWT_SECRET" in lines[0], lines


async def test_health_readiness_and_metrics(
    replicas: tuple[Replica, Replica], http: aiohttp.ClientSession
) -> None:
    replica = replicas[1]
    session = new_session()
    browser, connected = await join(http, replica, session)
    refused = await open_socket(http, replica, session, make_token(connected["user_id"], aud="other"))
    assert (await refused.expect_close())[0] == 4001
    await browser.send("state_update", {"patch": {"m": 1}})
    await browser.expect("state_update")
    for path in ("/healthz", "/readyz"):
        async with http.get(replica.base_url + path) as response:
            assert response.status == 200
    async with http.get(replica.base_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = [METRIC_LINE.match(line) for line in text.splitlines() if line and not line.startswith("#")]
    assert all(samples)
    names = {m.group(1) for m in samples if m}
    # Counters end in _total; no id of a session, user or connection is ever a label value.
    for identifier in (session, connected["user_id"], connected["connection_id"]):
        assert identifier not in text
    assert any(n.endswith("_total") and "handshake" in n for n in names)
    assert any("sockets_open" in n for n in names)
    assert any("fanout_seconds" in n for n in names)
    assert any("reconnects_total" in n for n in names)
    await browser.close()
