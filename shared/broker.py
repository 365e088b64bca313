"""NATS helpers every service shares: connect, JSON request/reply, idempotent JetStream setup."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue
from pydantic import TypeAdapter

from shared import jsonutil
from shared.config import ServiceSettings
from shared.errors import ErrorCode, IkiroError, NoResponders, Unavailable, error_body, error_from_body
from shared.metrics import ServiceMetrics
from shared.workers import KeyedWorkers

log = logging.getLogger(__name__)

M = TypeVar("M")

REQUEST_TIMEOUT_S = 5.0


async def connect(settings: ServiceSettings, metrics: ServiceMetrics, name: str) -> NATS:
    """Connect for the life of the process: reconnect forever, report health into `metrics`."""

    client: list[NATS] = []  # the callbacks are made before the client they report on

    async def on_disconnected() -> None:
        metrics.nats_connected.set(0)
        if client and (client[0].is_closed or client[0].is_draining):
            log.info("nats connection closed")
        else:
            log.warning("nats disconnected")

    async def on_reconnected() -> None:
        metrics.nats_connected.set(1)
        metrics.nats_reconnects.inc()
        log.info("nats reconnected")

    async def on_error(err: Exception) -> None:
        metrics.nats_errors.inc()
        log.warning("nats error: %s", err)

    nc = await nats.connect(
        servers=settings.nats_servers,
        name=name,
        user_credentials=settings.nats_creds,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=on_error,
    )
    client.append(nc)
    metrics.nats_connected.set(1)
    return nc


async def request(nc: NATS, subject: str, body: Any, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """JSON request; returns the reply's fields, raises the `IkiroError` an `{"ok": false}` carries."""
    try:
        msg = await nc.request(subject, jsonutil.dumps(body), timeout=timeout_s)
    except nats.errors.NoRespondersError:
        raise NoResponders(f"nobody answers {subject}") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise Unavailable(f"{subject} timed out") from None
    reply = jsonutil.loads(msg.data)
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error") if isinstance(reply, dict) else None
        raise error_from_body(err if isinstance(err, dict) else {"code": ErrorCode.INTERNAL_ERROR})
    reply.pop("ok")
    return reply


Handler = Callable[[bytes], Awaitable[dict[str, Any]]]


def replier(handler: Handler, logger: logging.Logger, pool: KeyedWorkers) -> Callable[[Msg], Awaitable[None]]:
    """Wrap `handler` as a NATS callback answering `{"ok": true, ...}` or `{"ok": false, "error"}`.

    Requests run concurrently in `pool` (a subscription callback alone would serialise them).
    """

    async def on_request(msg: Msg) -> None:
        await pool.submit(msg.reply or msg.subject, functools.partial(answer, msg))

    async def answer(msg: Msg) -> None:
        try:
            reply: dict[str, Any] = {"ok": True, **await handler(msg.data)}
        except IkiroError as err:
            reply = {"ok": False, "error": error_body(err)}
        except Exception:
            logger.exception("request on %s failed", msg.subject)
            reply = {"ok": False, "error": error_body(RuntimeError())}
        if msg.reply:
            try:
                await msg.respond(jsonutil.dumps(reply))
            except nats.errors.Error as err:
                logger.warning("reply on %s lost: %s", msg.subject, err)

    return on_request


async def kv_get(kv: KeyValue, key: str, adapter: TypeAdapter[M]) -> tuple[M, int] | None:
    """The value under `key` parsed by `adapter`, with its revision; None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return adapter.validate_json(entry.value or b""), entry.revision or 0


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to `config` (start-up is idempotent)."""
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        return await js.key_value(config.bucket)
