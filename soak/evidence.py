"""What a run gathered, and the lookups every check of the verdict shares.

Sources, from most to least authoritative: the final command records (`edge.commands.get`, whose
`history` is the store's own list of states), what each simulated agent was handed and acked,
what the submitter was answered, and the lifecycle events the observer caught. Every time in the
verdict is relative to the start of the load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .faults import FaultLog
from .miniapp import MiniAppLoad
from .observer import Observer, Records
from .stack import Stack
from .submitter import Submission

EVIDENCE_LIMIT = 20
LOG_LINES = 12
ACKED = ("received", "executing", "completed", "failed")
ACK_RANK = {"received": 1, "executing": 2, "completed": 3, "failed": 3}
# An ack's fate is looked for this long after it was sent: the gateway's request (5 s), then its
# fallback publish to the EDGE_ACKS stream (5 s).
ACK_FATE_S = 12.0
SERVICE_RESTART = 1012
ABNORMAL = 1006


@dataclass(slots=True)
class Evidence:
    """Everything gathered by a run, handed to `verdict.judge`."""

    t0: float  # unix time the load started
    config: dict[str, Any]
    submissions: dict[str, Submission]
    records: Records
    observer: Observer
    agents: dict[str, Any]  # what each agent saw, by agent id (`agents.Agent.result`)
    faults: list[FaultLog]
    miniapp: MiniAppLoad
    finals: dict[str, dict[str, Any]]  # `miniapp.sessions.get` of each session at the end
    stack: Stack
    settle: dict[str, Any]
    crashes: list[dict[str, Any]] = field(default_factory=list)  # replicas that exited without a fault
    dispatcher_views: dict[str, float | None] = field(default_factory=dict)  # unfinished, per replica
    intruders: dict[str, Any] = field(default_factory=dict)  # `Intruders.verdict`
    harness_error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def states(record: dict[str, Any] | None) -> list[tuple[str, float]]:
    """A record's history as (state, unix time)."""
    if record is None:
        return []
    return [(h["state"], datetime.fromisoformat(h["at"]).timestamp()) for h in record.get("history", [])]


class Context:
    """The evidence, indexed for the checks: what the agents saw by command, error frames by socket."""

    def __init__(self, ev: Evidence) -> None:
        self.ev = ev
        gateways = [s.name for s in ev.stack.edges]
        # command id -> deliveries [t, gateway, conn]; acks [status, t, gateway, conn, agent]
        self.deliveries: dict[str, list[list[Any]]] = {}
        self.acks: dict[str, list[list[Any]]] = {}
        self.dups: dict[str, list[list[Any]]] = {}
        # (agent, gateway, conn) -> the `error` frames that socket got: (t, code)
        self.errors: dict[tuple[str, str, int], list[tuple[float, str]]] = {}
        # (agent, conn) -> how that socket ended: (closed at, close code); conn counts from 1
        self.closes: dict[tuple[str, int], tuple[float | None, int | None]] = {}
        for agent, result in ev.agents.items():
            for seq, (_, closed, _, code) in enumerate(result["conns"], start=1):
                self.closes[(agent, seq)] = (closed, code)
            for cid, t, gw, conn in result["deliveries"]:
                self.deliveries.setdefault(cid, []).append([t, gateways[gw], conn])
            for cid, status, t, gw, conn in result["acks"]:
                self.acks.setdefault(cid, []).append([status, t, gateways[gw], conn, agent])
            for cid, t, gw, conn in result["duplicates"]:
                self.dups.setdefault(cid, []).append([t, gateways[gw], conn])
            for t, gw, conn, code, _ in result["errors"]:
                self.errors.setdefault((agent, gateways[gw], conn), []).append((t, str(code)))

    def rel(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.ev.t0, 3)

    def faults_at(self, t: float) -> list[str]:
        return [f"{f.name}({f.target})" for f in self.ev.faults if f.active_at(t)]

    def ack_fate(self, t: float, gateway: str, conn: int, agent: str) -> str:
        """Why an ack sent at `t` never reached the store: an `error` frame answered it; its socket
        was closed by the gateway (1011: it never read it) or by a restart (1012); its gateway was
        killed with it inside; or nothing the soak saw explains it."""
        for t_err, error in self.errors.get((agent, gateway, conn), []):
            if t <= t_err <= t + ACK_FATE_S:
                return f"refused by the gateway ({error})"
        closed, code = self.closes.get((agent, conn), (None, None))
        if closed is None or closed - t > ACK_FATE_S:
            return "unexplained"  # the socket outlived the ack: the gateway had it, and lost it
        if code == SERVICE_RESTART:
            return "gateway SIGTERMed (socket closed 1012)"
        if code not in (None, ABNORMAL):
            return f"socket closed {code} by the gateway"
        # An ack written just after the kill still left the agent: its TCP stack took it.
        for f in self.ev.faults:
            if (
                f.name == "sigkill_busiest_edge_gateway"
                and f.target == gateway
                and t - 1.0 <= f.started <= closed
            ):
                return "gateway SIGKILLed"
        return f"socket dropped ({code})"

    def command(self, cid: str, why: str) -> dict[str, Any]:
        """Everything known of one command, for an anomaly's evidence."""
        ev = self.ev
        record = ev.records.records.get(cid)
        sub = ev.submissions.get(cid)
        agent = sub.agent if sub else record.get("edge_agent_id") if record else None
        times = [a[1] for a in self.acks.get(cid, [])] + [d[0] for d in self.deliveries.get(cid, [])]
        return {
            "why": why,
            "command_id": cid,
            "edge_agent_id": agent,
            "submitted_at": self.rel(sub.first_at) if sub else None,
            "submit_tries": [[self.rel(t), what, round(s, 3)] for t, what, s in sub.tries] if sub else None,
            "state": record.get("state") if record else "not_found",
            "error": record.get("error") if record else None,
            "attempts": record.get("attempts") if record else None,
            "history": [[state, self.rel(at)] for state, at in states(record)] if record else None,
            "observed_events": [[e[0], e[2], e[3], self.rel(e[5])] for e in ev.observer.events.get(cid, [])],
            "agent_deliveries": [[self.rel(t), gw, conn] for t, gw, conn in self.deliveries.get(cid, [])],
            "agent_acks": [[s, self.rel(t), gw, conn] for s, t, gw, conn, _ in self.acks.get(cid, [])],
            "agent_errors": [
                [self.rel(t), gw, conn, code]
                for (who, gw, conn), errs in self.errors.items()
                if who == agent
                for t, code in errs
                if times and min(times) - 1 <= t <= max(times) + ACK_FATE_S
            ],
            "faults_active": sorted({f for t in times for f in self.faults_at(t)}),
            "log_lines": ev.stack.log_lines_with(cid, LOG_LINES),
        }
