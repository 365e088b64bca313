"""The development page: a live view of a session, built on the browser client (web/).

Served only when MINIAPP_DEV_PAGE is on (the default with ENVIRONMENT=development, refused in
production) and never routed by the production ingress, which carries only the socket path:

  GET /dev/miniapp/{session_id}?token=<jwt>   the page
  GET /dev/assets/{file}                      the page's script and style
  GET /dev/packages/{package}/{file}          the client package's files, as its package.json lists
                                              them (the page imports it by name, via an import map)
  GET /dev/token?user_id=<id>                 a fresh dev token, for the page's in-band refresh
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from shared.protocol.miniapp import USER_ID_PATTERN
from shared.protocol.subjects import is_token
from shared.supabase import mint_dev_token

from .config import MiniAppSettings

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parents[2] / "web"
PAGE = WEB / "miniapp-dev" / "index.html"
ASSETS = {
    "dev.js": WEB / "miniapp-dev" / "dev.js",
    "dev.css": WEB / "miniapp-dev" / "dev.css",
}
CLIENT_PACKAGE = WEB / "miniapp-client"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
DEV_TOKEN_TTL_S = 3600
SETTINGS = web.AppKey("miniapp_dev_settings", MiniAppSettings)
USER_ID = re.compile(USER_ID_PATTERN)


def add_dev_routes(app: web.Application, settings: MiniAppSettings) -> None:
    manifest = CLIENT_PACKAGE / "package.json"
    if not all(path.is_file() for path in (PAGE, manifest, *ASSETS.values())):
        # An installed package (the container image) carries no web/: there is no page to serve.
        log.warning("dev page asked for, but %s is not in this install: not served", WEB)
        return
    app[SETTINGS] = settings
    app.router.add_get("/dev/miniapp/{session_id}", page)
    app.router.add_get("/dev/assets/{name}", asset)
    package = json.loads(manifest.read_text())
    files = {name: CLIENT_PACKAGE / name for name in package["files"] if name.endswith(".js")}
    app.router.add_get(f"/dev/packages/{package['name']}/{{name}}", _serve_from(files))
    app.router.add_get("/dev/token", token)


async def page(request: web.Request) -> web.StreamResponse:
    if not is_token(request.match_info["session_id"]):
        raise web.HTTPBadRequest(text="malformed session id")
    return _file(PAGE)


async def asset(request: web.Request) -> web.StreamResponse:
    return await _serve_from(ASSETS)(request)


def _serve_from(files: dict[str, Path]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler serving the named files of `files`, and nothing else."""

    async def serve(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    return serve


async def token(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    user_id = request.query.get("user_id", "")
    if not USER_ID.fullmatch(user_id):
        raise web.HTTPBadRequest(text="user_id must be 1 to 256 printable characters without spaces")
    if not settings.supabase_jwt_secret:
        raise web.HTTPNotFound(text="dev tokens need SUPABASE_JWT_SECRET (HS256)")
    minted = mint_dev_token(user_id, settings.supabase_jwt_secret, settings.jwt_audience, DEV_TOKEN_TTL_S)
    return web.json_response({"token": minted}, headers={"Cache-Control": "no-store"})


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(
        path, headers={"Content-Type": CONTENT_TYPES[path.suffix], "Cache-Control": "no-store"}
    )
