"""The HTTP server of every service: aiohttp's, closed where an outsider could lean on it
(DESIGN section 2; SECURITY.md says which threat each guard answers).

- **Headers within `HEADER_TIMEOUT_S`.** aiohttp's keep-alive timer starts when a connection opens
  and again after each response, and when it fires it closes a connection that is still waiting
  for a whole request. Set to 10 s it is the header deadline: half a request, or a byte every few
  seconds, is closed 10 s after the connection opened (or after its last response), never later.
  Connections closed before they sent one whole request are counted.
- **A malformed request** (a request line over 8,190 bytes, a bad header) is answered 400 with a
  fixed body and counted. aiohttp's own answer echoes the start of the line (a token in a query
  string, say) into the body and into an ERROR log line with a traceback.
- **No `Server` header**: aiohttp's names itself and the Python version.

aiohttp is pinned (pyproject.toml), and `tests/integration/test_http_guards.py` proves each guard
over a real socket, so a change in the internals used here fails there first.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

from shared.protocol.errors import ErrorCode

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, counting header timeouts and answering bad requests tersely."""

    __slots__ = ()

    @property
    def _refused(self) -> Counter:
        return cast(_GuardedServer, self._manager).refused

    def _process_keepalive(self) -> None:
        open_before, peer = not self._force_close, _peer(self)
        super()._process_keepalive()
        if open_before and self._force_close and self._request_count == 0:
            self._refused.labels(reason="header_timeout").inc()
            log.info(
                "closed a connection without a whole request after %.0f s",
                self._keepalive_timeout,
                extra={"peer": peer},
            )

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # a bug of ours: aiohttp logs its traceback and answers without detail
            return super().handle_error(request, status, exc, message)
        self._refused.labels(reason="malformed").inc()
        log.info(
            "refused a malformed request",
            extra={"peer": _peer(self), "status": status, "problem": type(exc).__name__},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way")
        error = {"code": str(ErrorCode.INVALID_REQUEST), "message": HTTPStatus(status).phrase}
        response = web.json_response({"error": error}, status=status)
        response.force_close()
        return response


def _peer(handler: RequestHandler) -> str | None:
    peer = handler.peername
    return str(peer[0]) if isinstance(peer, tuple) else None


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, refused: Counter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = refused

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An `AppRunner` whose connections have the guards above; `refused` counts what they close."""

    def __init__(self, app: web.Application, refused: Counter, **kwargs: Any) -> None:
        super().__init__(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=HEADER_TIMEOUT_S,
            **kwargs,
        )
        self._refused = refused

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _GuardedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            refused=self._refused,
            **made._kwargs,
        )


_AIOHTTP_PREPARE_HEADERS = web.StreamResponse._prepare_headers


async def _prepare_headers_without_server(self: web.StreamResponse) -> None:
    await _AIOHTTP_PREPARE_HEADERS(self)
    self._headers.popall(hdrs.SERVER, None)


# aiohttp sets `Server: Python/3.x aiohttp/3.x` with setdefault as the last step before writing,
# so nothing an app does earlier can take it away; every response passes here.
web.StreamResponse._prepare_headers = _prepare_headers_without_server  # type: ignore[method-assign]
