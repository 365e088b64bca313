"""The gateway replica: its open sockets, presence claims, and the one-live-socket-per-agent rule."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared.broker.connection import NATS_ERRORS, on_reconnect
from shared.broker.streams import ensure_edge_gateway
from shared.protocol import codec, subjects
from shared.protocol.agents import PRESENCE_EVENT, parse_deliver_request
from shared.protocol.errors import CloseCode, IkiroError, NotFound, error_body
from shared.runtime.ratelimit import KeyedWindowLimiter
from shared.runtime.service import new_task_owner

from .config import EdgeGatewaySettings
from .connection import OK, EdgeConnection
from .handlers import handle_frame
from .metrics import EdgeGatewayMetrics
from .upstream import Upstream

log = logging.getLogger(__name__)

# Bounds on what NATS may buffer for this replica's deliveries before a dispatcher's request times out.
DELIVER_PENDING_MSGS = 100_000
DELIVER_PENDING_BYTES = 256 * 1024 * 1024
NOT_HERE = codec.dumps({"ok": False, "error": error_body(NotFound("no such connection on this gateway"))})
PULL_RETRY_MAX_S = 5.0
REASSERT_AT_ONCE = 64
CLAIM_RETRIES_S = (0.2, 0.5, 1.0)
REASSERT_RETRIES_S = (0.0, 1.0, 2.0, 4.0)


class Gateway:
    def __init__(self, settings: EdgeGatewaySettings, nc: NATS, metrics: EdgeGatewayMetrics) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = metrics
        self.tasks = new_task_owner(metrics)
        self.sync_limiter = KeyedWindowLimiter(settings.sync_rate_per_min)
        self.gateway_id = uuid.uuid4().hex  # names this replica's delivery subject
        self.sockets: dict[str, EdgeConnection] = {}  # the live socket of each agent on this replica
        self.connections: dict[str, EdgeConnection] = {}  # every open socket, by connection id
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self._presence_sub: Subscription | None = None
        self._deliver_sub: Subscription | None = None
        self.upstream: Upstream

    async def start(self) -> None:
        agents = await ensure_edge_gateway(self.nc.jetstream(), self.settings.jetstream_replicas)
        self.upstream = Upstream(
            self.nc, agents, self.tasks, self.settings.upstream_timeout_s, self.gateway_id
        )
        self._deliver_sub = await self.nc.subscribe(
            subjects.deliver(self.gateway_id),
            cb=self._on_deliver,
            pending_msgs_limit=DELIVER_PENDING_MSGS,
            pending_bytes_limit=DELIVER_PENDING_BYTES,
        )
        self._presence_sub = await self.nc.subscribe(subjects.PRESENCE_ALL, cb=self._on_presence)
        on_reconnect(self.nc, self._reassert_presence)
        self.tasks.spawn(self.upstream.dispatchers.follow(), "follow_dispatchers")

    async def drain(self) -> None:
        """Close every socket with 1012 so agents reconnect at once elsewhere; wait for cleanup."""
        for conn in list(self.connections.values()):
            conn.close_soon(CloseCode.SERVICE_RESTART, "service restart")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_grace_s / 2):
                await self.all_closed.wait()
                await self.upstream.acks_settled()  # the last acks read go out before NATS drains

    async def stop(self) -> None:
        for sub in (self._presence_sub, self._deliver_sub):
            if sub is not None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        self._presence_sub = self._deliver_sub = None
        await self.tasks.close()

    async def serve(self, conn: EdgeConnection) -> None:
        """The life of one socket, opened already: push what waits, read until it closes, release."""
        pusher: asyncio.Task[None] | None = None

        async def read() -> None:
            nonlocal pusher
            try:
                pusher = self.tasks.spawn(self.push_pending(conn), "push_pending")
                await conn.read_frames(
                    functools.partial(handle_frame, conn, self.upstream),
                    self.settings.max_frame_bytes,
                    self.settings.idle_timeout_s,
                )
            except Exception:
                log.exception("edge socket failed", extra={"edge_agent_id": conn.edge_agent_id})
                conn.close_soon(CloseCode.INTERNAL_ERROR, "internal error")

        try:
            await conn.run(read)
        finally:
            # aiohttp may cancel this handler once the peer is gone: the release of the agent's
            # presence runs in a task the gateway owns, which that cannot cut short.
            await asyncio.shield(self.tasks.spawn(self._finish(conn, pusher), "edge_socket_cleanup"))

    async def _finish(self, conn: EdgeConnection, pusher: asyncio.Task[None] | None) -> None:
        if pusher is not None:
            pusher.cancel()
        code = conn.close_code
        self.metrics.disconnected(code)
        log.info(
            "edge agent disconnected",
            extra={"edge_agent_id": conn.edge_agent_id, "connection_id": conn.connection_id, "code": code},
        )
        await self.close(conn)

    async def open(self, conn: EdgeConnection) -> None:
        """Make `conn` the agent's live socket here and everywhere, then announce it."""
        older = self.sockets.get(conn.edge_agent_id)
        self.sockets[conn.edge_agent_id] = conn
        # Reachable before the claim: a dispatcher that sees the claim can deliver at once.
        self.connections[conn.connection_id] = conn
        self.all_closed.clear()
        self.metrics.sockets_open.set(len(self.connections))
        if older is not None:
            older.close_soon(CloseCode.REPLACED, "replaced by a newer connection")
        for delay_s in CLAIM_RETRIES_S:  # a JetStream leader election takes a moment
            try:
                conn.epoch = await self.upstream.claim(conn.edge_agent_id, conn.connection_id)
                break
            except NATS_ERRORS:
                await asyncio.sleep(delay_s)
        else:
            conn.epoch = await self.upstream.claim(conn.edge_agent_id, conn.connection_id)
        if conn.saw_newer(0):
            conn.close_soon(CloseCode.REPLACED, "replaced by a newer connection")

    async def close(self, conn: EdgeConnection) -> None:
        """Forget `conn`; report the agent offline only if no newer socket took over."""
        self.connections.pop(conn.connection_id, None)
        if self.sockets.get(conn.edge_agent_id) is conn:
            del self.sockets[conn.edge_agent_id]
        self.metrics.sockets_open.set(len(self.connections))
        try:
            if conn.epoch:
                await self.upstream.release(
                    conn.edge_agent_id, conn.connection_id, conn.epoch, conn.connected_at
                )
        except (IkiroError, nats.errors.Error) as err:
            log.warning("presence not released: %s", err, extra={"edge_agent_id": conn.edge_agent_id})
        finally:
            if not self.connections:
                self.all_closed.set()

    async def push_pending(self, conn: EdgeConnection) -> None:
        """Push the agent's waiting commands in priority order; retry while the dispatcher is away."""
        delay = 0.25
        while not conn.closing:
            try:
                commands = await self.upstream.pull(conn.edge_agent_id, conn.connection_id, via_socket=True)
            except IkiroError as err:
                log.info(
                    "pull on connect failed, retrying: %s",
                    err.message,
                    extra={"edge_agent_id": conn.edge_agent_id},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, PULL_RETRY_MAX_S)
                continue
            for command in commands:
                if not conn.send("command", codec.encode("command", command)):
                    return
            return

    async def _on_deliver(self, msg: Msg) -> None:
        """A dispatcher's delivery to one of this replica's sockets, answered only when it failed;
        or a probe of a socket, always answered."""
        connection_id, frame = parse_deliver_request(msg.data)
        conn = self.connections.get(connection_id)
        reply = conn.deliver(frame) if conn is not None else NOT_HERE
        if msg.reply and (reply is not OK or not frame):
            await msg.respond(reply)

    async def _reassert_presence(self) -> None:
        """Back on NATS: put every socket of this gateway back online, or close it if replaced."""
        conns = list(self.sockets.values())
        for delay_s in REASSERT_RETRIES_S:
            await asyncio.sleep(delay_s)
            failed: list[EdgeConnection] = []
            for start in range(0, len(conns), REASSERT_AT_ONCE):
                chunk = [conn for conn in conns[start : start + REASSERT_AT_ONCE] if not conn.closing]
                epochs = await asyncio.gather(
                    *(self.upstream.reassert(conn) for conn in chunk), return_exceptions=True
                )
                for conn, epoch in zip(chunk, epochs, strict=True):
                    if isinstance(epoch, BaseException):
                        failed.append(conn)
                    elif epoch is None:
                        conn.close_soon(CloseCode.REPLACED, "replaced by a newer connection")
                    else:
                        conn.epoch = epoch
            if not failed:
                return
            conns = failed
        # Still failing: these agents' sockets go, so that they come back and claim afresh.
        log.warning("presence not reasserted for %d sockets: closing them", len(conns))
        for conn in conns:
            conn.close_soon(CloseCode.SERVICE_RESTART, "reconnect")

    async def _on_presence(self, msg: Msg) -> None:
        """Another replica (or this one) announced a socket: close ours if it is now the older."""
        try:
            event = PRESENCE_EVENT.validate_json(msg.data)
        except ValidationError:
            return
        if event.event != "connected":
            return
        conn = self.sockets.get(event.edge_agent_id)
        if conn is None or conn.connection_id == event.connection_id:
            return
        if conn.saw_newer(event.epoch):
            conn.close_soon(CloseCode.REPLACED, "replaced by a newer connection")


GATEWAY = web.AppKey("edge_gateway", Gateway)
