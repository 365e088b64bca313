"""The MiniApp gateway replica: its buckets, presence, internal API, and the life of each socket."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from shared.broker.connection import serve_requests
from shared.broker.streams import ensure_miniapp
from shared.protocol import subjects
from shared.protocol.errors import CloseCode
from shared.protocol.miniapp import MAX_MEMBERS_BYTES
from shared.runtime.service import new_task_owner
from shared.runtime.tasks import KeyedWorkers
from shared.supabase import Jwks, SupabaseVerifier

from .config import MiniAppSettings
from .connection import Connection
from .handlers import Context, dispatch
from .hub import Hub
from .internal_api import InternalApi
from .metrics import MiniAppGatewayMetrics
from .presence import Presence
from .sessions import LocalSession
from .state import StateStore

log = logging.getLogger(__name__)

API_CONCURRENCY = 64


def make_verifier(settings: MiniAppSettings) -> SupabaseVerifier:
    jwks: Jwks | None = None
    if settings.supabase_jwks_url:
        jwks = Jwks(url=settings.supabase_jwks_url)
    elif settings.supabase_jwks_file:
        jwks = Jwks(path=Path(settings.supabase_jwks_file))
    return SupabaseVerifier(
        settings.jwt_audience, secret=settings.supabase_jwt_secret, jwks=jwks, leeway_s=settings.jwt_leeway_s
    )


class Gateway:
    def __init__(self, settings: MiniAppSettings, nc: NATS, metrics: MiniAppGatewayMetrics) -> None:
        self.settings = settings
        self.nc = nc
        self.metrics = metrics
        self.tasks = new_task_owner(metrics)
        self.verifier = make_verifier(settings)
        self.requests = KeyedWorkers(API_CONCURRENCY)
        self.subs: list[Subscription] = []
        self.hub: Hub
        self.ctx: Context

    async def start(self) -> None:
        settings = self.settings
        store = await ensure_miniapp(
            self.nc.jetstream(),
            settings.jetstream_replicas,
            settings.session_history,
            # A record holds the state, the patch that made it and the member list.
            settings.max_state_bytes + settings.max_frame_bytes + MAX_MEMBERS_BYTES + 4096,
        )
        state = StateStore(
            store.sessions, self.metrics, self.tasks, settings.max_state_bytes, settings.session_idle_ttl_s
        )
        presence = Presence(
            self.nc,
            store.presence,
            self.metrics,
            self.tasks,
            settings.heartbeat_interval_s,
            settings.presence_ttl_s,
        )
        self.hub = Hub(
            self.nc,
            state,
            presence,
            self.metrics,
            self.tasks,
            settings.max_connections_per_session,
            settings.miniapp_max_sockets_per_user,
            settings.open_by_default,
        )
        self.ctx = Context(self.nc, state, self.verifier, self.metrics, self.settings)
        await presence.start()
        api = InternalApi(state, self.hub)
        self.subs = await serve_requests(
            self.nc, api.routes(), subjects.MINIAPP_QUEUE_GROUP, self.requests, log
        )

    async def serve(self, conn: Connection, session: LocalSession, exp: float) -> None:
        """An admitted socket's life in its session: read its frames until it closes, then leave."""
        self.metrics.handshakes.labels(outcome="accepted").inc()
        conn.expire_at(exp, self.verifier.leeway_s)
        try:
            await conn.run(
                functools.partial(
                    conn.read_frames,
                    functools.partial(dispatch, self.ctx, conn, session),
                    self.settings.max_frame_bytes,
                )
            )
        finally:
            # aiohttp may cancel this handler once the peer is gone: leaving the session (presence,
            # counts) runs in a task the gateway owns, which that cannot cut short.
            await asyncio.shield(self.tasks.spawn(self._leave(conn, session), "miniapp_socket_cleanup"))

    async def _leave(self, conn: Connection, session: LocalSession) -> None:
        conn.stop_timers()
        await self.hub.leave(conn, session)
        self.metrics.disconnected(conn.close_code)

    async def drain(self) -> None:
        """Close every socket with 1012 and wait (bounded) until each has left its session."""
        for sub in self.subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self.subs.clear()
        self.hub.close_all(CloseCode.SERVICE_RESTART, "service restart")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.shutdown_grace_s / 2):
                await self.hub.all_left.wait()

    async def stop(self) -> None:
        await self.requests.close()
        await self.tasks.close()
        # Our entries are gone with our sockets; dropping the lease now spares the others a TTL wait.
        await self.hub.presence.release()
        await self.verifier.close()


GATEWAY = web.AppKey("miniapp_gateway", Gateway)
