"""What every `ikiro` subcommand shares: a short-lived NATS connection and JSON-lines output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.aio.client import Client as NATS


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url.split(","), connect_timeout=3, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()
