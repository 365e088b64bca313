"""MiniApp subcommands of the `ikiro` tool: dev tokens, watching a session, server-side updates.

ikiro miniapp-token --user U             mint a dev MiniApp JWT (HS256, SUPABASE_JWT_SECRET)
ikiro miniapp-join SESSION --user U      join a session; print every frame as a JSON line
ikiro miniapp-push SESSION --patch JSON  apply a server-sourced state update over NATS
ikiro miniapp-get SESSION                show a session's state, version and peers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import aiohttp
import nats

from devtools.devstack import DEV_JWT_SECRET
from shared.broker.connection import request
from shared.protocol import subjects
from shared.supabase import mint_dev_token

DEFAULT_USER = "dev-user"


def _print(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _token(args: argparse.Namespace) -> str:
    token: str | None = getattr(args, "token", None)
    return token or mint_dev_token(args.user, args.secret, args.audience, args.ttl)


async def cmd_miniapp_token(args: argparse.Namespace) -> int:
    print(_token(args))
    return 0


async def cmd_miniapp_join(args: argparse.Namespace) -> int:
    """Stay in the session until it closes (or Ctrl-C); `--send` frames go out after joining."""
    url = f"{args.url.rstrip('/')}/ws/miniapp/{args.session}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, params={"token": _token(args)}) as ws:
        if args.send:
            for line in args.send:
                await ws.send_str(line)
        reason = ""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    _print(json.loads(msg.data))
                except ValueError:
                    _print({"unparsed": msg.data})
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                reason = msg.extra or ""
                break
            elif msg.type is not aiohttp.WSMsgType.BINARY:
                break
        _print({"closed": ws.close_code, "reason": reason})
        return 0 if ws.close_code in (1000, 1001, 1012) else 1


async def cmd_miniapp_push(args: argparse.Namespace) -> int:
    patch = json.loads(args.patch)
    if not isinstance(patch, dict):
        print("error: --patch must be a JSON object", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"session_id": args.session, "patch": patch}
    if args.base_version is not None:
        body["base_version"] = args.base_version
    nc = await nats.connect(args.nats.split(","), connect_timeout=3, max_reconnect_attempts=2)
    try:
        _print(await request(nc, subjects.MINIAPP_STATE_UPDATE, body))
    finally:
        await nc.close()
    return 0


async def cmd_miniapp_get(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.nats.split(","), connect_timeout=3, max_reconnect_attempts=2)
    try:
        _print(await request(nc, subjects.MINIAPP_GET, {"session_id": args.session}))
    finally:
        await nc.close()
    return 0


def _token_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default=DEFAULT_USER, help="the token's sub (user id)")
    p.add_argument(
        "--secret",
        default=os.environ.get("SUPABASE_JWT_SECRET", DEV_JWT_SECRET),
        help="HS256 secret (default: $SUPABASE_JWT_SECRET or the dev secret)",
    )
    p.add_argument("--audience", default=os.environ.get("JWT_AUDIENCE", "authenticated"))
    p.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Install the MiniApp subcommands; each sets `handler` to an `async (args) -> exit code`."""
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")

    p = subparsers.add_parser("miniapp-token", help="mint a dev MiniApp JWT")
    p.set_defaults(handler=cmd_miniapp_token)
    _token_options(p)

    p = subparsers.add_parser("miniapp-join", help="join a MiniApp session and print every frame")
    p.set_defaults(handler=cmd_miniapp_join)
    p.add_argument("session")
    p.add_argument("--url", default="ws://127.0.0.1:8081", help="MiniApp gateway base URL")
    p.add_argument("--token", default=None, help="use this JWT instead of minting one")
    p.add_argument("--send", action="append", default=[], help="a JSON frame to send after joining")
    _token_options(p)

    p = subparsers.add_parser("miniapp-push", help="apply a server-sourced state update")
    p.set_defaults(handler=cmd_miniapp_push)
    p.add_argument("session")
    p.add_argument("--patch", required=True, help="JSON Merge Patch (a JSON object)")
    p.add_argument("--base-version", type=int, default=None)
    p.add_argument("--nats", default=nats_url)

    p = subparsers.add_parser("miniapp-get", help="show a MiniApp session")
    p.set_defaults(handler=cmd_miniapp_get)
    p.add_argument("session")
    p.add_argument("--nats", default=nats_url)
