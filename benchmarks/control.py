"""How the orchestrator drives a load generator: one JSON op per stdin line, one JSON reply per stdout line.

A generator announces itself with `{"ok": true, "event": "ready"}`, then answers each op in order
with `{"ok": true, ...}` or `{"ok": false, "error": ...}`; `exit` (or stdin closing) ends it.
Generators run on uvloop, as the services do, with the file descriptor limit raised to the hard
limit (thousands of sockets per process).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import uvloop

MAX_LINE_BYTES = 64 * 1024 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: one descriptor per socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def emit(reply: dict[str, Any]) -> None:
    """Write one reply line to stdout."""
    sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
    sys.stdout.buffer.flush()


async def serve_ops(handlers: dict[str, Handler], close: Callable[[], Awaitable[None]]) -> None:
    """Answer ops from stdin until `exit`; `close` runs last, whatever happened."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ok": True, "event": "ready"})
    try:
        while line := await reader.readline():
            request: dict[str, Any] = orjson.loads(line)
            op = request.pop("op")
            if op == "exit":
                break
            try:
                reply = await handlers[op](request)
            except Exception as err:
                traceback.print_exc()
                emit({"ok": False, "error": f"{type(err).__name__}: {err}"})
            else:
                emit({"ok": True, **reply})
    finally:
        await close()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The generator's whole life: limits, uvloop, `main`."""
    raise_fd_limit()
    uvloop.run(main())
