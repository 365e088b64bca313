"""NATS connections and the JSON request/reply convention of every internal subject.

Every reply is `{"ok": true, ...}` or `{"ok": false, "error": {"code", "message"}}` (DESIGN section 4).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from shared.protocol import codec
from shared.protocol.errors import (
    ErrorCode,
    IkiroError,
    NoResponders,
    Unavailable,
    error_body,
    error_from_body,
)
from shared.runtime.config import ServiceSettings
from shared.runtime.metrics import ServiceMetrics
from shared.runtime.tasks import KeyedWorkers

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a call to NATS or JetStream raises when the broker cannot answer (nats-py's JetStream errors
# and its timeouts are subclasses of these).
NATS_ERRORS = (nats.errors.Error, TimeoutError)
REQUEST_TIMEOUT_S = 5.0
# How long set-up waits for a broker that does not answer before the service gives up starting.
PATIENCE_S = 60.0
# What NATS may buffer for one API subscription before it reports a slow consumer.
PENDING_MSGS = 10_000
PENDING_BYTES = 64 * 1024 * 1024
STATUS = Header.STATUS.value
NO_RESPONDERS = "503"  # the status of the reply nats-server sends when no one listens


_NATS_PARSE_HEADER_LINES = NATS._parse_header_lines


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's `Client._parse_header_lines`, result for result, without its per-character
    `any(c.isspace() for c in key)`: that generator was most of the cost of a message with headers
    (every JetStream delivery and direct get; a third of a dispatcher's start over 100,000
    unfinished commands)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:  # whitespace inside a header name: skipped, as nats-py does
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


NATS._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]

# What to redo after a reconnect, per connection (`on_reconnect`): a client does not learn what the
# rest of the system concluded while it was away.
_RECONNECT_HOOKS: weakref.WeakKeyDictionary[NATS, list[Callable[[], Awaitable[None]]]] = (
    weakref.WeakKeyDictionary()
)


_HOOK_TASKS: set[asyncio.Task[None]] = set()


def on_reconnect(nc: NATS, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` after each reconnect of a connection made by `connect` (its failure is logged)."""
    _RECONNECT_HOOKS.setdefault(nc, []).append(hook)


def off_reconnect(nc: NATS, hook: Callable[[], Awaitable[None]]) -> None:
    """Stop running `hook` after reconnects."""
    hooks = _RECONNECT_HOOKS.get(nc)
    if hooks is not None and hook in hooks:
        hooks.remove(hook)


async def _run_hook(hook: Callable[[], Awaitable[None]]) -> None:
    try:
        await hook()
    except Exception:
        log.exception("after the reconnect: %s failed", getattr(hook, "__qualname__", hook))


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
        # In tasks: nats-py awaits this callback inside its reconnect, which must not wait on them.
        for hook in _RECONNECT_HOOKS.get(client[0], []) if client else []:
            task = asyncio.create_task(_run_hook(hook))
            _HOOK_TASKS.add(task)
            task.add_done_callback(_HOOK_TASKS.discard)

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
    metrics.count_nats_traffic(nc.stats)
    return nc


class Requests:
    """Requests on one connection through one reply subscription, tokens from a counter.

    nats-py's `request` pays, per call, a NUID and an `os.urandom` for its token and an
    `asyncio.wait_for` for its timeout; here a timeout is one timer handle. For the internal API
    (`request`) and the dispatcher's index entries (a refused one is written again). Record writes
    stay on nats-py's publish: on this path, soak runs saw bursts of refused writes while a stream
    leader was replaced, which nats-py's did not show.
    """

    _of: weakref.WeakKeyDictionary[NATS, Requests] = weakref.WeakKeyDictionary()

    def __init__(self, nc: NATS) -> None:
        self._nc = weakref.ref(nc)  # weak: the connection is the key that finds this instance
        self._prefix = nc.new_inbox() + "."
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._subscribed = False
        self._subscribing = asyncio.Lock()

    @classmethod
    def of(cls, nc: NATS) -> Requests:
        """The connection's one instance."""
        found = cls._of.get(nc)
        if found is None:
            found = cls._of[nc] = cls(nc)
        return found

    async def ask(
        self, subject: str, payload: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Msg:
        """The reply to `payload` on `subject`; raises nats-py's `TimeoutError`, `NoRespondersError`,
        or whatever its publish raises."""
        nc = self._nc()
        if nc is None:
            raise nats.errors.ConnectionClosedError
        if not self._subscribed:
            async with self._subscribing:
                if not self._subscribed:
                    await nc.subscribe(self._prefix + "*", cb=self._on_reply)
                    self._subscribed = True
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = reply
        try:
            await nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            timer = loop.call_later(timeout_s, self._expire, token)  # from the send, as nats-py's
            try:
                msg = await reply
            finally:
                timer.cancel()
        finally:
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def _on_reply(self, msg: Msg) -> None:
        reply = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if reply is not None and not reply.done():
            reply.set_result(msg)

    def _expire(self, token: str) -> None:
        reply = self._waiting.pop(token, None)
        if reply is not None and not reply.done():
            reply.set_exception(nats.errors.TimeoutError())


async def request(nc: NATS, subject: str, body: Any, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """A request (`body` as JSON, or bytes sent as they are); returns the reply's fields, raises the
    `IkiroError` an `{"ok": false}` carries."""
    data = body if isinstance(body, bytes) else codec.dumps(body)
    try:
        msg = await Requests.of(nc).ask(subject, data, timeout_s)
    except nats.errors.NoRespondersError:
        raise NoResponders(f"nobody answers {subject}") from None
    except TimeoutError:
        raise Unavailable(f"{subject} timed out") from None
    except nats.errors.Error as failure:
        raise Unavailable(f"{subject}: {failure}") from None
    reply = codec.loads(msg.data)
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error") if isinstance(reply, dict) else None
        raise error_from_body(err if isinstance(err, dict) else {"code": ErrorCode.INTERNAL_ERROR})
    reply.pop("ok")
    return reply


# How long a request to a partition's owner waits for one to take the partition (a handoff, or the
# lease of a replica that died running out) before it answers `unavailable`.
OWNER_PATIENCE_S = 4.0


async def request_owner(
    nc: NATS,
    subject: str,
    body: Any,
    timeout_s: float = REQUEST_TIMEOUT_S,
    patience_s: float = OWNER_PATIENCE_S,
) -> dict[str, Any]:
    """`request` to a subject that one owner answers, asked again while nobody does yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.05
    while True:
        try:
            return await request(nc, subject, body, timeout_s)
        except NoResponders:
            if loop.time() + delay > deadline:
                raise Unavailable(f"nobody owns {subject} yet, try again") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def patiently(
    call: Callable[[], Awaitable[T]],
    what: str,
    within_s: float = PATIENCE_S,
    attempt_s: float | None = None,
    max_delay_s: float = 5.0,
) -> T:
    """`call()`, again while the broker cannot answer (JetStream electing a leader, a node coming
    back) for up to `within_s`: for the set-up a service cannot start without. `attempt_s` bounds
    each try (a request to a leader that is gone otherwise waits out the whole API timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    delay = 0.2
    while True:
        try:
            return await (call() if attempt_s is None else asyncio.wait_for(call(), attempt_s))
        except NATS_ERRORS as err:
            if loop.time() + delay > deadline:
                raise
            log.warning("%s: the broker did not answer (%s), again in %.1f s", what, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


Handler = Callable[[bytes], Awaitable[dict[str, Any]]]


async def serve_requests(
    nc: NATS, routes: Mapping[str, Handler], queue: str, pool: KeyedWorkers, logger: logging.Logger
) -> list[Subscription]:
    """Answer each subject of `routes` in queue group `queue`, concurrently in `pool`.

    A subscription callback alone would answer one request at a time.
    """

    async def answer(handler: Handler, msg: Msg) -> None:
        try:
            reply: dict[str, Any] = {"ok": True, **await handler(msg.data)}
        except IkiroError as err:
            reply = {"ok": False, "error": error_body(err)}
        except NATS_ERRORS as err:
            # The broker did not answer this handler (a node or leader moving): the caller may ask again.
            logger.warning("request on %s: the broker did not answer: %s", msg.subject, err)
            reply = {"ok": False, "error": error_body(Unavailable("the store did not answer, try again"))}
        except Exception:
            logger.exception("request on %s failed", msg.subject)
            reply = {"ok": False, "error": error_body(RuntimeError())}
        if msg.reply:
            try:
                await msg.respond(codec.dumps(reply))
            except nats.errors.Error as err:
                logger.warning("reply on %s lost: %s", msg.subject, err)

    def on_request(handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            await pool.submit(msg.reply or msg.subject, functools.partial(answer, handler, msg))

        return receive

    subs = [
        await nc.subscribe(
            subject,
            queue=queue,
            cb=on_request(handler),
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )
        for subject, handler in routes.items()
    ]
    await nc.flush()  # the server has them: a caller that saw this replica ready finds it answering
    return subs
