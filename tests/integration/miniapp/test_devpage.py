"""The dev page's routes (`/dev/...`): served in development, absent when off and in production,
and a production replica told to serve them refuses to start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.harness.miniapp import Replicas, new_session, open_socket, replica_env
from tests.harness.proc import NatsServer, Service, run_to_exit

CLIENT = "/dev/packages/@ikiro/miniapp-client/miniapp-client.js"
DEV_PATHS = ("/dev/miniapp/{session}", "/dev/assets/dev.js", CLIENT, "/dev/token?user_id=someone")
Start = Callable[..., Awaitable[Service]]  # a replica process with these settings


@pytest.fixture
async def replica_with(broker: NatsServer, logs: Path) -> AsyncIterator[Start]:
    replicas = Replicas(broker.url, logs)
    yield replicas.start
    replicas.stop()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_development_serves_the_page_its_assets_and_working_tokens(
    replica_with: Start, http: aiohttp.ClientSession
) -> None:
    replica = await replica_with(ENVIRONMENT="development")
    session = new_session()
    status, kind, html = await get(http, f"{replica.http}/dev/miniapp/{session}")
    assert status == 200 and kind.startswith("text/html") and "dev.js" in html
    # The page imports the client by its package name, through the import map its CSP allows.
    assert '"@ikiro/miniapp-client": "' + CLIENT + '"' in html
    for path in ("/dev/assets/dev.js", CLIENT):
        status, kind, _ = await get(http, replica.http + path)
        assert status == 200 and kind.startswith("text/javascript"), (path, status, kind)
    refused = ["/dev/assets/..%2F..%2Fpyproject.toml", "/dev/assets/index.html", "/dev/assets/x.js"]
    package = "/dev/packages/@ikiro/miniapp-client/"
    refused += [package + "package.json", package + "..%2Fminiapp-dev%2Fdev.js", package + "test%2Ffakes.js"]
    for path in refused:
        assert (await get(http, replica.http + path))[0] == 404, path
    assert (await get(http, f"{replica.http}/dev/miniapp/not.a.session"))[0] == 400
    assert (await get(http, f"{replica.http}/dev/token?user_id=has%20space"))[0] == 400

    async with http.get(f"{replica.http}/dev/token?user_id=dev-user-1") as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        token = (await r.json())["token"]
    browser = await open_socket(http, replica, session, token)
    assert (await browser.expect("connected"))["user_id"] == "dev-user-1"
    await browser.close()


@pytest.mark.parametrize(
    "env",
    [{"ENVIRONMENT": "development", "MINIAPP_DEV_PAGE": "false"}, {"ENVIRONMENT": "production"}],
    ids=["switched-off", "production"],
)
async def test_no_dev_route_exists_when_the_page_is_off(
    replica_with: Start, http: aiohttp.ClientSession, env: dict[str, str]
) -> None:
    replica = await replica_with(**env)
    for path in DEV_PATHS:
        assert (await get(http, replica.http + path.format(session=new_session())))[0] == 404, path


async def test_production_refuses_to_start_with_the_dev_page(broker: NatsServer, logs: Path) -> None:
    env = replica_env(broker.url, ENVIRONMENT="production", MINIAPP_DEV_PAGE="true")
    code, lines = await run_to_exit("services.miniapp_gateway", env, logs)
    assert code != 0
    assert len(lines) == 1 and "MINIAPP_DEV_PAGE" in lines[0], lines
