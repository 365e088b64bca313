"""A real Chromium (Debian's, driven by Playwright) on the MiniApp dev page, and a front door.

The dev page (`web/miniapp-dev/`) is built on the browser client (`web/miniapp-client/`), and
every control and readout has an id, so a test reads what a person would see. Waits are
Playwright's `wait_for_function`: a condition polled in the page, with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, Playwright

from tests.harness.proc import Service, free_port

WAIT_MS = 10_000
# A headless browser on a CI machine: no GPU, no sandbox (root in a container), and nothing that
# phones home or downloads (component updates, sync, field trials).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def chromium_path() -> str:
    """Debian's Chromium, or the one `CHROMIUM` names; never a downloaded build."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError(
            "no Chromium for the browser tests: `make test` installs Debian's chromium and "
            "chromium-driver (devtools/system-deps); install them, or set CHROMIUM to a binary"
        )
    return path


async def launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)


class DevPage:
    """One browser context (its own cookies and storage: another person) on a session's dev page."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    @classmethod
    async def open(cls, browser: Browser, origin: str, session_id: str, token: str) -> DevPage:
        context = await browser.new_context()
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        opened = cls(context, page)
        await page.goto(f"{origin}/dev/miniapp/{session_id}?token={token}")
        await opened.until("document.getElementById('status').dataset.status === 'open'", "the socket opens")
        return opened

    async def close(self) -> None:
        await self.context.close()

    async def until(self, condition: str, what: str, arg: Any = None) -> None:
        """Wait for a JavaScript expression (or `arg => ...` function) to be truthy in the page."""
        expression = condition if condition.lstrip().startswith("(") else f"() => {condition}"
        try:
            await self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
        except Exception as exc:
            raise AssertionError(f"{what}: not within {WAIT_MS} ms; page shows {await self.shows()}") from exc

    async def text(self, element_id: str) -> str:
        return await self.page.locator(f"#{element_id}").inner_text()

    async def version(self) -> int:
        return int(await self.text("version"))

    async def state(self) -> Any:
        return json.loads(await self.text("state"))

    async def connection_id(self) -> str:
        return await self.text("connection-id")

    async def peers(self) -> list[dict[str, str]]:
        """The "here now" list: each peer's data attributes (userId, connectionId, typing, self)."""
        peers: list[dict[str, str]] = await self.page.eval_on_selector_all(
            "#peers li", "items => items.map(li => ({...li.dataset}))"
        )
        return peers

    async def sees(self, user_id: str, typing: bool | None = None) -> None:
        """Until `user_id` is in the "here now" list (and typing, or not, when asked)."""
        await self.until(
            """([user, typing]) => [...document.querySelectorAll('#peers li')].some(li =>
                 li.dataset.userId === user && (typing === null || li.dataset.typing === String(typing)))""",
            f"the page shows {user_id} (typing: {typing})",
            [user_id, typing],
        )

    async def not_sees(self, user_id: str) -> None:
        await self.until(
            "(user) => ![...document.querySelectorAll('#peers li')].some(li => li.dataset.userId === user)",
            f"the page no longer shows {user_id}",
            user_id,
        )

    async def outcome(self, expected: str) -> None:
        """Until the last patch sent from the page is `confirmed` or `refused`."""
        await self.until(
            "(want) => document.getElementById('patch-result').dataset.outcome === want",
            f"the patch is {expected}",
            expected,
        )

    async def send_patch(
        self, patch: dict[str, Any], optimistic: bool = False, base_version: int | None = None
    ) -> None:
        await self.page.fill("#patch", json.dumps(patch))
        await self.page.set_checked("#optimistic", optimistic)
        await self.page.fill("#base-version", "" if base_version is None else str(base_version))
        await self.page.click("#send-patch")

    async def record_states(self) -> None:
        """From now on keep the reason of every `state` event the client emits, in order."""
        await self.page.evaluate(
            """() => {
                window.stateReasons = [];
                window.miniapp.on('state', (e) => window.stateReasons.push(e.reason));
            }"""
        )

    async def state_reasons(self) -> list[str]:
        reasons: list[str] = await self.page.evaluate("() => window.stateReasons")
        return reasons

    async def shows(self) -> dict[str, Any]:
        """What the page shows, for failure messages."""
        shown: dict[str, Any] = {"page errors": self.errors}
        with contextlib.suppress(Exception):  # the page may be gone: then the errors are all there is
            shown |= await self.page.evaluate(
                """() => Object.fromEntries(['status', 'connection-id', 'version', 'state', 'last-error',
                  'patch-result'].map(id => [id, document.getElementById(id)?.textContent]))"""
            )
        return shown


class FrontDoor:
    """A TCP front for gateway replicas, like a Kubernetes Service: each new connection goes to
    the current `target`; connections already open stay where they are."""

    def __init__(self, target: Service) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FrontDoor:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
