"""Typed aiohttp app keys of the edge gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .gateway import Gateway
    from .sync import SyncLimiter

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
SYNC_LIMITER: web.AppKey[SyncLimiter] = web.AppKey("sync_limiter")
