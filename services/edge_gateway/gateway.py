"""The gateway replica: its open sockets, presence claims, and the one-live-socket-per-agent rule."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from aiohttp.http_websocket import WSCloseCode
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared import edge_jetstream, subjects
from shared.agents import PRESENCE_EVENT
from shared.errors import IkiroError
from shared.metrics import EdgeGatewayMetrics
from shared.workers import cancel_and_wait

from .config import EdgeGatewaySettings
from .connection import REPLACED, EdgeConnection
from .upstream import Upstream

log = logging.getLogger(__name__)

# Bounds on what NATS may buffer for one socket before the dispatcher's request times out.
DELIVER_PENDING_MSGS = 256
DELIVER_PENDING_BYTES = 4 * 1024 * 1024
PULL_RETRY_MAX_S = 5.0


class Gateway:
    def __init__(self, settings: EdgeGatewaySettings, nc: NATS, metrics: EdgeGatewayMetrics) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = metrics
        self.sockets: dict[str, EdgeConnection] = {}
        self.open_connections: set[EdgeConnection] = set()
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self._presence_sub: Subscription | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.upstream: Upstream

    async def start(self) -> None:
        edge = await edge_jetstream.ensure(self.nc.jetstream(), self.settings.jetstream_replicas)
        self.upstream = Upstream(self.nc, edge.agents, self.settings.upstream_timeout_s)
        self._presence_sub = await self.nc.subscribe(subjects.PRESENCE_ALL, cb=self._on_presence)

    async def stop(self) -> None:
        if self._presence_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._presence_sub.unsubscribe()
            self._presence_sub = None
        await cancel_and_wait(list(self._background))

    async def open(self, conn: EdgeConnection) -> None:
        """Make `conn` the agent's live socket here and everywhere, then announce it."""
        older = self.sockets.get(conn.edge_agent_id)
        self.sockets[conn.edge_agent_id] = conn
        self.open_connections.add(conn)
        self.all_closed.clear()
        self.metrics.sockets_open.set(len(self.open_connections))
        if older is not None:
            self.close_soon(older, REPLACED, "replaced by a newer connection")
        # Subscribe before claiming: a dispatcher that sees the claim can deliver at once.
        conn.subscription = await self.nc.subscribe(
            subjects.deliver(conn.edge_agent_id),
            cb=conn.on_deliver,
            pending_msgs_limit=DELIVER_PENDING_MSGS,
            pending_bytes_limit=DELIVER_PENDING_BYTES,
        )
        conn.epoch = await self.upstream.claim(conn.edge_agent_id, conn.connection_id)
        if conn.saw_newer(0):
            await conn.close(REPLACED, "replaced by a newer connection")

    def finish(self, conn: EdgeConnection, pusher: asyncio.Task[None] | None) -> asyncio.Task[None]:
        """Clean up after a socket's handler, in a task this gateway owns."""
        task = asyncio.create_task(self._finish(conn, pusher))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _finish(self, conn: EdgeConnection, pusher: asyncio.Task[None] | None) -> None:
        if pusher is not None:
            await cancel_and_wait([pusher])
        code = int(conn.close_code or conn.ws.close_code or WSCloseCode.ABNORMAL_CLOSURE)
        self.metrics.disconnects.labels(code=str(code)).inc()
        log.info(
            "edge agent disconnected",
            extra={"edge_agent_id": conn.edge_agent_id, "connection_id": conn.connection_id, "code": code},
        )
        await self.close(conn)

    async def close(self, conn: EdgeConnection) -> None:
        """Forget `conn`; report the agent offline only if no newer socket took over."""
        if conn.subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await conn.subscription.unsubscribe()
        if self.sockets.get(conn.edge_agent_id) is conn:
            del self.sockets[conn.edge_agent_id]
        self.open_connections.discard(conn)
        self.metrics.sockets_open.set(len(self.open_connections))
        try:
            if conn.epoch:
                await self.upstream.release(conn.edge_agent_id, conn.connection_id)
        except (IkiroError, nats.errors.Error) as err:
            log.warning("presence not released: %s", err, extra={"edge_agent_id": conn.edge_agent_id})
        finally:
            if not self.open_connections:
                self.all_closed.set()

    async def push_pending(self, conn: EdgeConnection) -> None:
        """Push the agent's waiting commands in priority order; retry while the dispatcher is away."""
        delay = 0.25
        while not conn.closing and not conn.ws.closed:
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
                if not await conn.send("command", command.model_dump(mode="json")):
                    return
            return

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
            self.close_soon(conn, REPLACED, "replaced by a newer connection")

    def close_soon(self, conn: EdgeConnection, code: int, reason: str) -> None:
        """Close without making the caller wait for the peer's close handshake."""
        task = asyncio.create_task(conn.close(code, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Close every socket with 1012 so agents reconnect at once elsewhere; wait for cleanup."""
        await asyncio.gather(
            *(
                conn.close(WSCloseCode.SERVICE_RESTART, "service restart")
                for conn in list(self.open_connections)
            )
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_grace_s / 2):
                await self.all_closed.wait()
        await self.stop()
