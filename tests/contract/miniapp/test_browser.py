"""The MiniApp in a real browser: Debian's headless Chromium on the dev page, which is built on the
client library (`web/miniapp-client/`), against gateway replicas as real processes.

These never skip: without Chromium the run fails and says how to get it (`make test` installs it).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright

from tests.contract.miniapp.conftest import StartReplica
from tests.harness.browser import DevPage, FrontDoor, launch
from tests.harness.miniapp import join, make_token, new_session, new_user
from tests.harness.proc import Service


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


async def test_two_people_on_two_replicas_see_each_other_type_update_and_leave(
    browser: Browser, replicas: tuple[Service, Service]
) -> None:
    session, ana, ben = new_session(), new_user(), new_user()
    on_a = await DevPage.open(browser, replicas[0].http, session, make_token(ana))
    on_b = await DevPage.open(browser, replicas[1].http, session, make_token(ben))
    try:
        await on_a.sees(ben)
        await on_b.sees(ana)

        await on_a.page.locator("#patch").press_sequentially('{"title": "x"}')
        await on_b.sees(ana, typing=True)

        await on_a.send_patch({"title": "hello", "items": [1, 2]})
        await on_a.outcome("confirmed")
        version = await on_a.version()
        await on_b.until(
            "(v) => document.getElementById('version').textContent === String(v)", "B's version", version
        )
        assert await on_b.state() == await on_a.state() == {"title": "hello", "items": [1, 2]}
        await on_b.sees(ana, typing=False)

        await on_a.close()
        await on_b.not_sees(ana)
        assert await on_b.text("connection-count") == "1"
        assert on_b.errors == []
    finally:
        await on_a.close()
        await on_b.close()


async def test_a_token_that_expires_is_refreshed_in_band_and_the_socket_stays_open(
    browser: Browser, replicas: tuple[Service, Service]
) -> None:
    # The page's token lives 6 s; the client asks the dev page's /dev/token for a fresh one before then.
    expires_at = int(time.time()) + 6
    token = make_token(new_user(), exp_in=expires_at - time.time())
    page = await DevPage.open(browser, replicas[0].http, new_session(), token)
    try:
        first_connection = await page.connection_id()
        await page.until(
            "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('token refresh'))",
            "the page logs an auth_ok",
        )
        await page.until("(at) => Date.now() / 1000 > at + 1.5", "the first token has expired", expires_at)
        assert await page.page.locator("#status").get_attribute("data-status") == "open"
        assert await page.page.locator("#status").get_attribute("data-close-code") is None
        assert await page.connection_id() == first_connection
        assert page.errors == []
    finally:
        await page.close()


async def test_a_replica_stopped_under_the_page_hands_it_to_another_with_the_same_state(
    browser: Browser,
    replicas: tuple[Service, Service],
    start_replica: StartReplica,
    http: aiohttp.ClientSession,
) -> None:
    victim, survivor = await start_replica(), replicas[1]
    session = new_session()
    async with FrontDoor(victim) as front:
        page = await DevPage.open(browser, front.http, session, make_token(new_user()))
        try:
            first_connection = await page.connection_id()
            await page.send_patch({"step": 1})
            await page.outcome("confirmed")
            assert await page.version() == 1

            # Kubernetes takes a terminating pod out of the Service first; then it sends SIGTERM.
            front.target = survivor
            victim.signal(signal.SIGTERM)
            await page.until(
                "document.getElementById('status').dataset.closeCode === '1012'", "the page sees 1012"
            )
            other, _ = await join(http, survivor, session)
            await other.send("state_update", {"patch": {"step": 2, "by": "other"}, "base_version": 1})
            await other.expect("state_update", version=2)

            await page.until(
                """() => document.getElementById('status').dataset.status === 'open'
                     && document.getElementById('version').textContent === '2'""",
                "the page is back, at version 2",
            )
            assert await page.state() == {"step": 2, "by": "other"}
            assert await page.connection_id() != first_connection
            assert await victim.wait_exit(15) == 0
            await other.close()
            assert page.errors == []
        finally:
            await page.close()


async def test_a_refused_stale_update_is_rolled_back_in_the_page(
    browser: Browser, replicas: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    session = new_session()
    page = await DevPage.open(browser, replicas[0].http, session, make_token(new_user()))
    try:
        other, _ = await join(http, replicas[1], session)
        await other.send("state_update", {"patch": {"owner": "other"}})
        await other.expect("state_update", version=1)
        await page.until("document.getElementById('version').textContent === '1'", "the page at version 1")

        await page.record_states()
        await page.send_patch({"owner": "me", "mine": True}, optimistic=True, base_version=0)
        await page.outcome("refused")

        assert await page.state() == {"owner": "other"}
        assert await page.version() == 1
        assert await page.text("pending") == "0"
        assert await page.page.locator("#last-error").get_attribute("data-code") == "version_conflict"
        reasons = await page.state_reasons()
        assert reasons[:1] == ["optimistic"] and "rollback" in reasons, reasons
        await other.close()
        assert page.errors == []
    finally:
        await page.close()
