"""`ikiro`: the operator and developer tool. One entry point, one subcommand per job.

ikiro token --agent A            mint an edge token
ikiro submit --agent A --type T  submit a command and follow it to a final state
ikiro get ID | cancel ID         show or cancel a command
ikiro agent A                    show an agent
ikiro commands A                 an agent's unfinished commands, in delivery order
ikiro purge A --reason TEXT      cancel an agent's queued and sent commands
ikiro sim-agent --agent A        run a simulated edge agent (socket, then /edge/sync)
ikiro stack                      run the whole stack locally (`make run`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

import nats

from devtools import miniapp_cli, permissions
from devtools.console import nats_client, print_json
from shared.auth import DEV_EDGE_SECRET, generate_edge_token
from shared.client import CommandClient, Submitted
from shared.protocol.commands import TERMINAL
from shared.protocol.errors import IkiroError


async def cmd_token(args: argparse.Namespace) -> int:
    print(generate_edge_token(args.agent, args.phone, args.secret))
    return 0


async def cmd_submit(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        client = CommandClient(nc)

        async def submit() -> Submitted:
            payload = json.loads(args.payload)
            sub = await client.submit(args.agent, args.type, payload, priority=args.priority, ttl_s=args.ttl)
            print_json({"command_id": sub.command_id, "state": sub.state, "duplicate": sub.duplicate})
            return sub

        if args.no_follow:
            await submit()
            return 0
        # Subscribe first, so not even the first `queued` event can be missed.
        async with client.lifecycle(edge_agent_id=args.agent) as events:
            sub = await submit()
            async with asyncio.timeout(args.timeout):
                async for event in events:
                    if event.command_id != sub.command_id:
                        continue
                    print_json(event.model_dump(mode="json"))
                    if event.state in TERMINAL:
                        return 0 if event.state == "completed" else 1
    return 1


async def cmd_get(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        print_json((await CommandClient(nc).get(args.command_id)).model_dump(mode="json"))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        print_json((await CommandClient(nc).cancel(args.command_id)).model_dump(mode="json"))
    return 0


async def cmd_agent(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        print_json((await CommandClient(nc).agent(args.agent)).model_dump())
    return 0


async def cmd_commands(args: argparse.Namespace) -> int:
    async with nats_client(args.nats) as nc:
        listed = await CommandClient(nc).commands(args.agent, args.limit)
    now = time.time()
    print(f"{'command_id':36}  {'type':18}  {'priority':9}  {'state':9}  {'attempts':>8}  {'age':>8}")
    for record in listed.commands:
        age = now - record.created_at.timestamp()
        print(
            f"{record.command_id!s:36}  {record.command_type:18}  {record.priority:9}  {record.state:9}  "
            f"{record.attempts:>8}  {age:>7.0f}s"
        )
    print(f"{len(listed.commands)} of {listed.total} unfinished")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        question = f"cancel every queued and sent command of {args.agent}? [y/N] "
        answer = await asyncio.to_thread(input, question)
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return 1
    async with nats_client(args.nats) as nc:
        purged = await CommandClient(nc).purge(args.agent, args.reason)
    print(f"{purged.cancelled} cancelled, {purged.left} left (received or executing)")
    return 0


async def cmd_sim_agent(args: argparse.Namespace) -> int:
    from devtools.sim_agent import SimAgent

    agent = SimAgent(
        base_url=args.url.rstrip("/"),
        edge_agent_id=args.agent,
        secret=args.secret,
        fail=args.fail,
        poll_interval_s=args.poll_interval,
        on_event=lambda kind, data: print_json({"event": kind, **data}),
    )
    await agent.run()
    return 0


async def cmd_nats_permissions(args: argparse.Namespace) -> int:
    """Each service's NATS user, least privilege: as `nsc` commands, or as nats-server config."""
    if args.format == "conf":
        print(permissions.server_config(args.password_env))
    else:
        for command in permissions.nsc_commands(args.account):
            print(command)
    return 0


async def cmd_stack(args: argparse.Namespace) -> int:
    from devtools.devstack import run_stack

    await run_stack()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikiro", description="Ikiro realtime backend tool")
    sub = parser.add_subparsers(dest="command", required=True)
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    secret = os.environ.get("EDGE_SECRET", DEV_EDGE_SECRET)

    def add(
        name: str, handler: Callable[[argparse.Namespace], Awaitable[int]], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("token", cmd_token, "mint an HMAC edge token")
    p.add_argument("--agent", required=True)
    p.add_argument("--phone", default="+15550100")
    p.add_argument("--secret", default=secret, help="EDGE_SECRET (default: $EDGE_SECRET or the dev secret)")

    p = add("submit", cmd_submit, "submit a command and follow its lifecycle to a final state")
    p.add_argument("--nats", default=nats_url)
    p.add_argument("--agent", required=True)
    p.add_argument("--type", required=True, help="command_type, e.g. send_message_now")
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--priority", default="normal", choices=["normal", "immediate"])
    p.add_argument("--ttl", type=int, default=None, help="ttl_s")
    p.add_argument("--timeout", type=float, default=120.0, help="stop following after this many seconds")
    p.add_argument("--no-follow", action="store_true")

    for name, handler, help_ in (("get", cmd_get, "show a command record"), ("cancel", cmd_cancel, "cancel")):
        p = add(name, handler, help_)
        p.add_argument("--nats", default=nats_url)
        p.add_argument("command_id")

    p = add("agent", cmd_agent, "show an edge agent")
    p.add_argument("--nats", default=nats_url)
    p.add_argument("agent")

    p = add("commands", cmd_commands, "an agent's unfinished commands, in delivery order")
    p.add_argument("--nats", default=nats_url)
    p.add_argument("--limit", type=int, default=100, help="at most this many (1 to 1000)")
    p.add_argument("agent")

    p = add("purge", cmd_purge, "cancel an agent's queued and sent commands")
    p.add_argument("--nats", default=nats_url)
    p.add_argument("--reason", default=None, help="kept in each command's error (at most 200 characters)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("agent")

    p = add("sim-agent", cmd_sim_agent, "run a simulated edge agent")
    p.add_argument("--agent", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="edge gateway base URL")
    p.add_argument("--secret", default=secret)
    p.add_argument("--fail", action="store_true", help="ack every command as failed")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between /edge/sync polls")

    add("stack", cmd_stack, "run NATS and every service locally until Ctrl-C")

    p = add("nats-permissions", cmd_nats_permissions, "print each service's NATS user (least privilege)")
    p.add_argument("--format", choices=["nsc", "conf"], default="nsc")
    p.add_argument("--account", default="IKIRO", help="nsc: the account the users belong to")
    p.add_argument(
        "--password-env", default="NATS_PASSWORD_", help="conf: passwords read from $<this><USER> at load"
    )

    miniapp_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.handler(args))
        return code
    except IkiroError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except (TimeoutError, nats.errors.Error, OSError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
