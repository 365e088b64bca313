"""`python -m soak`: chaos under load on a real 3-node cluster; see soak/README.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .run import Options, soak

DEFAULT_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of load and faults (default 120)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full verdict, with evidence, here")
    parser.add_argument("--agents", type=int, default=100, help="simulated edge agents (default 100)")
    parser.add_argument("--rate", type=float, default=20.0, help="commands submitted per second (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument("--sessions", type=int, default=6, help="MiniApp sessions (default 6)")
    parser.add_argument(
        "--members", type=int, default=4, help="members per session, split over both replicas"
    )
    parser.add_argument("--member-rate", type=float, default=2.0, help="state_updates per member per second")
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="the product checkout whose services run (default: this one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores) after a pass")
    args = parser.parse_args(argv)
    if args.duration < 10 or args.agents < 1 or args.rate <= 0 or args.members < 2 or args.sessions < 1:
        parser.error("need --duration >= 10, --agents >= 1, --rate > 0, --sessions >= 1, --members >= 2")
    opts = Options(
        duration_s=args.duration,
        agents=args.agents,
        rate=args.rate,
        seed=args.seed,
        root=args.root.resolve(),
        json_path=args.json,
        sessions=args.sessions,
        members=args.members,
        member_rate=args.member_rate,
        keep=args.keep,
    )
    try:
        return asyncio.run(soak(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
