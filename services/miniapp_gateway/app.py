"""The MiniApp gateway's aiohttp application: the socket route, health, and its NATS parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
from aiohttp import WSCloseCode, web
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig, StorageType

from services.miniapp_gateway.config import MiniAppSettings
from services.miniapp_gateway.handlers import Context
from services.miniapp_gateway.hub import Hub
from services.miniapp_gateway.internal_api import subscribe_internal_api
from services.miniapp_gateway.kvstore import Bucket
from services.miniapp_gateway.presence import Presence
from services.miniapp_gateway.state import StateStore
from services.miniapp_gateway.websocket import GATEWAY, Gateway, handle_socket
from shared import subjects
from shared.broker import ensure_kv
from shared.metrics import MiniAppGatewayMetrics
from shared.service import METRICS, NATS_CLIENT, add_health_routes
from shared.supabase import Jwks, SupabaseVerifier

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("miniapp_settings", MiniAppSettings)
# Server-placed delete markers (expired leases) stay this long, so a replica that starts after
# every other one died still reaps the dead replicas' connections.
MARKER_TTL_S = 24 * 3600
DRAIN_WAIT_S = 5.0


def make_verifier(settings: MiniAppSettings) -> SupabaseVerifier:
    jwks: Jwks | None = None
    if settings.supabase_jwks_url:
        jwks = Jwks(url=settings.supabase_jwks_url)
    elif settings.supabase_jwks_file:
        jwks = Jwks(path=Path(settings.supabase_jwks_file))
    return SupabaseVerifier(
        settings.jwt_audience, secret=settings.supabase_jwt_secret, jwks=jwks, leeway_s=settings.jwt_leeway_s
    )


def create_app(
    settings: MiniAppSettings, nc: NATS, metrics: MiniAppGatewayMetrics | None = None
) -> web.Application:
    """The gateway app; its JetStream buckets, presence and internal API start with the app."""
    app = web.Application()
    app[SETTINGS] = settings
    add_health_routes(app, nc, metrics or MiniAppGatewayMetrics())
    app.router.add_get("/ws/miniapp/{session_id:[^/]*}", handle_socket)
    app.cleanup_ctx.append(_gateway_ctx)
    return app


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    assert isinstance(metrics, MiniAppGatewayMetrics)
    nc = app[NATS_CLIENT]
    js = nc.jetstream()
    sessions_kv = await ensure_kv(
        js,
        KeyValueConfig(
            bucket=subjects.MINIAPP_SESSIONS_BUCKET,
            history=settings.session_history,
            max_value_size=settings.max_state_bytes + settings.max_frame_bytes + 4096,
            storage=StorageType.FILE,
            replicas=settings.jetstream_replicas,
            direct=True,
            # No delete markers here: nothing watches a session without sockets, and nats-server
            # raises a first write's TTL to the marker TTL when history > 1.
        ),
    )
    presence_kv = await ensure_kv(
        js,
        KeyValueConfig(
            bucket=subjects.MINIAPP_PRESENCE_BUCKET,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.jetstream_replicas,
            direct=True,
            limit_marker_ttl=MARKER_TTL_S,
        ),
    )
    store = StateStore(
        Bucket(js, sessions_kv, subjects.MINIAPP_SESSIONS_BUCKET),
        metrics,
        settings.max_state_bytes,
        settings.session_idle_ttl_s,
    )
    presence = Presence(
        nc,
        Bucket(js, presence_kv, subjects.MINIAPP_PRESENCE_BUCKET),
        metrics,
        settings.heartbeat_interval_s,
        settings.presence_ttl_s,
    )
    verifier = make_verifier(settings)
    hub = Hub(nc, store, presence, metrics, settings.max_connections_per_session)
    await presence.start()
    subs: list[Subscription] = []
    try:
        subs = await subscribe_internal_api(nc, store, hub)
        ctx = Context(nc=nc, store=store, verifier=verifier, metrics=metrics, leeway_s=verifier.leeway_s)
        app[GATEWAY] = Gateway(settings=settings, ctx=ctx, hub=hub, tasks=set())
        yield
    finally:
        await drain(app)
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        await presence.stop()
        await verifier.close()


async def drain(app: web.Application) -> None:
    """Close every socket with 1012 and wait (bounded) until each has left its session."""
    gateway = app.get(GATEWAY)
    if gateway is None:
        return
    gateway.hub.close_all(WSCloseCode.SERVICE_RESTART, "service restart")
    pending = set(gateway.tasks)
    if pending:
        await asyncio.wait(pending, timeout=DRAIN_WAIT_S)
    # Our entries are gone with our sockets; dropping the lease now spares the others a TTL wait.
    await gateway.hub.presence.stop()
