"""MiniApp subcommands of the `ikiro` tool: dev tokens, watching a session, server-side updates.

ikiro miniapp-token --user U             mint a dev MiniApp JWT (HS256, SUPABASE_JWT_SECRET)
ikiro miniapp-join SESSION --user U      join a session; print every frame as a JSON line
ikiro miniapp-push SESSION --patch JSON  apply a server-sourced state update over NATS
ikiro miniapp-get SESSION                show a session's state, version, peers and members
ikiro miniapp-members SESSION [--set U ... | --clear]
                                         show or set who may join (--clear: every authenticated user)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import aiohttp

from devtools.console import nats_client, print_json
from devtools.devstack import DEV_JWT_SECRET
from shared.client import SessionClient
from shared.supabase import mint_dev_token

DEFAULT_USER = "dev-user"


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
                    print_json(json.loads(msg.data))
                except ValueError:
                    print_json({"unparsed": msg.data})
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                reason = msg.extra or ""
                break
            elif msg.type is not aiohttp.WSMsgType.BINARY:
                break
        print_json({"closed": ws.close_code, "reason": reason})
        return 0 if ws.close_code in (1000, 1001, 1012) else 1


async def cmd_miniapp_push(args: argparse.Namespace) -> int:
    patch = json.loads(args.patch)
    if not isinstance(patch, dict):
        print("error: --patch must be a JSON object", file=sys.stderr)
        return 2
    async with nats_client(args.nats) as nc:
        print_json({"version": await SessionClient(nc).update(args.session, patch, args.base_version)})
    return 0


async def cmd_miniapp_get(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        print_json(asdict(await SessionClient(nc).get(args.session)))
    return 0


async def cmd_miniapp_members(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        sessions = SessionClient(nc)
        if args.clear or args.set is not None:
            reply = await sessions.set_members(args.session, None if args.clear else args.set)
            print_json(reply.model_dump())
        else:
            print_json({"members": await sessions.members(args.session)})
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

    p = subparsers.add_parser("miniapp-members", help="show or set who may join a MiniApp session")
    p.set_defaults(handler=cmd_miniapp_members)
    p.add_argument("session")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--set", nargs="*", metavar="USER_ID", help="only these users may join")
    who.add_argument("--clear", action="store_true", help="every authenticated user may join")
    p.add_argument("--nats", default=nats_url)
