"""`make bench`: the four scenarios of the benchmark suite, each product figure beside a bare baseline.

    python -m benchmarks [--quick] [--json FILE] [--only edge,fanout,capacity,storm] [--keep]
    python -m benchmarks compare A.json B.json

Absolute numbers on shared machines are noise; the ratio to a bare baseline measured in the same
run, on the same broker, is the figure to compare across commits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from . import report, suite
from .stack import FULL, QUICK


def main(argv: list[str]) -> int:
    """Run the suite, or `compare` two JSON files; the exit status."""
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks compare")
        parser.add_argument("a", type=Path)
        parser.add_argument("b", type=Path)
        args = parser.parse_args(argv[1:])
        print(report.compare(orjson.loads(args.a.read_bytes()), orjson.loads(args.b.read_bytes())))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small size, for a laptop")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--only",
        default=",".join(suite.SCENARIOS),
        help=f"comma-separated scenarios among {','.join(suite.SCENARIOS)} (default: all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the stores and process logs")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in suite.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    try:
        return asyncio.run(suite.run(QUICK if args.quick else FULL, only, args.json, args.keep))
    except (asyncio.CancelledError, KeyboardInterrupt):
        # SIGINT or SIGTERM: every process was stopped on the way out.
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
