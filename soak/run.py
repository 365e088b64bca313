"""One soak run, start to verdict: cluster, services, load, faults, settle, evidence, verdict.

Everything is bounded: each phase has a timeout, the whole run a hard deadline, and every process
it started is killed on the way out, on success, failure, exception or Ctrl-C alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from shared.auth import generate_edge_token

from .agent_pool import AgentPool
from .cluster import Cluster
from .evidence import Evidence
from .faults import Faults
from .intruders import Intruders
from .miniapp import MiniAppLoad
from .observer import Observer, Records
from .procs import SoakError
from .stack import DISPATCHER_TIMING, Secrets, Stack
from .submitter import Submitter, connect
from .verdict import judge, table

SETUP_TIMEOUT_S = 120.0
SETTLE_AFTER_LAST_FAULT_S = 60.0
SETTLE_AFTER_LAST_SUBMIT_S = 15.0
MINIAPP_SETTLE_S = 30.0
USER_PHONE = "+15550100"
QUEUE_DEPTH_REFRESH_S = 6.0


@dataclass(frozen=True, slots=True)
class Options:
    duration_s: float
    agents: int
    rate: float
    seed: int
    root: Path
    json_path: Path | None
    sessions: int
    members: int
    member_rate: float
    keep: bool


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[soak {time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


def hard_bound_s(opts: Options) -> float:
    """Far beyond any healthy run: setup, load, every fault's own bound, settle, the checks."""
    return SETUP_TIMEOUT_S + opts.duration_s * 2 + 400.0


async def soak(opts: Options) -> int:
    """Run the soak; 0 on a clean verdict, 1 on a loss, double execution or disagreement, 2 when
    the harness itself could not complete."""
    work = Path(tempfile.mkdtemp(prefix="ikiro-soak-"))
    say = Progress()
    # Ctrl-C and SIGTERM (a CI job cancelled) end the run the same way: every process it started is
    # stopped on the way out (a second signal is left to the children's parent-death signal).
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    say(f"work dir {work}; product {opts.root}")
    try:
        async with asyncio.timeout(hard_bound_s(opts)):
            verdict = await _run(opts, work, say)
    except TimeoutError:
        say(f"the run passed its hard bound of {hard_bound_s(opts):.0f} s; logs kept in {work}")
        return 2
    except asyncio.CancelledError:
        say(f"interrupted; every process it started is stopped; logs kept in {work}")
        raise
    except SoakError as err:
        say(f"harness failure: {err}; logs kept in {work}")
        return 2
    full = json.dumps(verdict, indent=2, default=str)
    if opts.json_path is not None:
        opts.json_path.write_text(full)
    print(table(verdict))
    summary = {k: verdict[k] for k in ("ok", "failures", "edge", "miniapp")}
    print(json.dumps(summary, default=str))
    ok = verdict["ok"]
    if ok and not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        (work / "verdict.json").write_text(full)
        say(f"kept for a look: {work / 'verdict.json'} (with evidence), service logs in {work / 'logs'}")
    if verdict["config"].get("harness_error"):
        return 2
    return 0 if ok else 1


async def _run(opts: Options, work: Path, say: Progress) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    keys = Secrets.fresh()
    log_dir = work / "logs"
    log_dir.mkdir()
    clients: list[NATS] = []
    client_events: Counter[str] = Counter()
    async with aiohttp.ClientSession() as http:
        cluster = Cluster(work / "nats", log_dir, http)
        stack = Stack(opts.root, cluster.urls, log_dir, http, keys)
        tokens = {
            f"soak-agent-{i:04d}": generate_edge_token(f"soak-agent-{i:04d}", USER_PHONE, keys.edge_secret)
            for i in range(opts.agents)
        }
        pool = AgentPool(tokens, [s.base for s in stack.edges], opts.seed, work, log_dir)
        miniapp = MiniAppLoad(
            [s.base for s in stack.miniapps],
            keys.jwt_secret,
            opts.sessions,
            opts.members,
            opts.member_rate,
            opts.seed,
        )
        supervisor: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                await cluster.start(60.0)
                say(f"3-node cluster healthy: {cluster.urls}")
                await stack.start()
                supervisor = asyncio.create_task(stack.supervise())
                say("2 dispatchers, 2 edge gateways, 2 MiniApp gateways ready")
                observer_nc = await connect(cluster.urls, "soak-observer", client_events)
                clients.append(observer_nc)
                nc = await connect(cluster.urls, "soak-client", client_events)
                clients.append(nc)
                observer = Observer(observer_nc)
                await observer.start()
                pool.start()
                took = await pool.wait_connected(opts.agents, 60.0)
                say(f"{opts.agents} agents connected in {took:.1f} s")
                await miniapp.start(30.0)
                say(f"{opts.sessions} MiniApp sessions x {opts.members} members joined")
            verdict = await _load_and_judge(opts, say, rng, cluster, stack, pool, miniapp, observer, nc)
            verdict["edge"]["observer"]["soak_nats_clients"] = dict(client_events)
            return verdict
        finally:
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)
            await miniapp.close()
            pool.stop_now()
            for client in clients:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5.0)
            stack.stop()
            cluster.stop()


async def _load_and_judge(
    opts: Options,
    say: Progress,
    rng: random.Random,
    cluster: Cluster,
    stack: Stack,
    pool: AgentPool,
    miniapp: MiniAppLoad,
    observer: Observer,
    nc: NATS,
) -> dict[str, Any]:
    t0 = time.time()
    started = time.monotonic()
    stop = asyncio.Event()
    submitter = Submitter(nc, pool.agent_ids, opts.rate, rng)
    faults = Faults(cluster, stack, pool, miniapp, nc, rng)
    records = Records(nc)
    harness_error: str | None = None
    keys = stack.keys
    intruders = Intruders(stack.edges, stack.miniapps, keys.edge_secret, keys.jwt_secret, opts.seed)
    submitting = asyncio.create_task(submitter.run(stop))
    intruding = asyncio.create_task(intruders.run(stop))
    background: list[asyncio.Task[Any]] = [submitting, intruding]
    try:
        miniapp.sending.set()
        say(f"load on: {opts.rate:g} commands/s, {opts.members * opts.sessions} MiniApp members writing")
        try:
            await faults.run(started, opts.duration_s)
        except SoakError as err:
            harness_error = str(err)
            say(f"fault failed: {err}")
        for entry in faults.log:
            say(f"fault {entry.name} on {entry.target}: {entry.error or 'recovered'} {entry.details}")
        await asyncio.sleep(max(0.0, started + opts.duration_s - time.monotonic()))
        stop.set()
        await submitting
        await submitter.finish()
        await intruding
        submit_end = time.time()
        say(f"load off after {time.monotonic() - started:.1f} s: {len(submitter.submissions)} submitted")

        last_fault = faults.last_ended
        deadline = max(last_fault + SETTLE_AFTER_LAST_FAULT_S, submit_end + SETTLE_AFTER_LAST_SUBMIT_S)
        background.append(miniapp_settle := asyncio.create_task(miniapp.settle(nc, MINIAPP_SETTLE_S)))
        accepted = [c for c, s in submitter.submissions.items() if s.accepted_at is not None]
        await _wait_final(records, observer, accepted, deadline)
        await records.fetch(list(submitter.submissions))
        settled_at = time.time()
        finals = await miniapp_settle
        say(f"settled {settled_at - last_fault:.1f} s after the last fault")
        agents = await pool.stop()
        views = await _dispatcher_views(stack)
    finally:  # an interrupted run leaves nothing running behind it
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await submitter.cancel()
    evidence = Evidence(
        t0=t0,
        config={
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
            "dispatcher": DISPATCHER_TIMING,
            "harness_error": harness_error,
        },
        crashes=stack.exits,
        submissions=submitter.submissions,
        records=records,
        observer=observer,
        agents=agents,
        faults=faults.log,
        miniapp=miniapp,
        finals=finals,
        stack=stack,
        settle={
            "last_fault_ended_at_s": round(last_fault - t0, 2),
            "load_ended_at_s": round(submit_end - t0, 2),
            "verdict_at_s": round(settled_at - t0, 2),
            "verdict_deadline_at_s": round(deadline - t0, 2),
        },
        harness_error=harness_error,
        dispatcher_views=views,
        intruders=intruders.verdict(faults.log, stack.log_lines_with),
    )
    return judge(evidence)


async def _wait_final(records: Records, observer: Observer, accepted: list[str], deadline: float) -> None:
    """Until every accepted command's record is final, or `deadline` (unix time): what is not final
    then is lost. The lifecycle events only say which records are worth reading again."""
    while True:
        pending = [c for c in accepted if not records.final(c) and c not in observer.final_seen]
        # Once the events say all are final, read every record not yet read final (`fetch` skips the rest).
        await records.fetch(pending or accepted)
        if all(records.final(c) for c in accepted) or time.time() >= deadline:
            return
        await asyncio.sleep(2.0)


async def _dispatcher_views(stack: Stack) -> dict[str, float | None]:
    """How many unfinished commands each dispatcher's own view holds once the run is settled (its
    queue-depth gauge, refreshed every 5 s): a view that disagrees with the store stopped following it."""
    await asyncio.sleep(QUEUE_DEPTH_REFRESH_S)
    return {s.name: await s.gauge("ikiro_command_queue_depth") for s in stack.dispatchers}
