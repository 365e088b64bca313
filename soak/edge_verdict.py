"""The edge figures: lost, executed twice, redelivered, the ack window, latencies.

- lost: accepted, and not final (or not found) when the verdict is taken.
- executed twice: handed to the agent again after an ack of it was applied: a `sent` after an
  acked state in the record's history or in the caught lifecycle events, or an agent handed a
  command it had executed by a send decided after an ack was applied, or by no send at all.
- ack window: `failed`/`execution_timeout` although the agent sent `completed`; and every ack that
  never reached the store, with why (an `error` frame, its gateway killed or restarted, unexplained).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .evidence import ACK_RANK, ACKED, EVIDENCE_LIMIT, Context, percentile, rounded, states
from .observer import TERMINAL

SUPERSEDED = "superseded by a later ack ("
Figures = dict[str, Any]
Anomalies = dict[str, list[dict[str, Any]]]


@dataclass(slots=True)
class Outcomes:
    """What became of the accepted commands, from their final records."""

    finals: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)  # by history
    redelivered_commands: int = 0
    redelivered_sends: int = 0
    undelivered: list[str] = field(default_factory=list)
    window: list[str] = field(default_factory=list)
    missed_events: int = 0
    commands_with_gaps: int = 0
    events_not_in_history: int = 0


def sent_after_ack(names: list[str]) -> bool:
    first_ack = next((i for i, s in enumerate(names) if s in ACKED), None)
    return first_ack is not None and "sent" in names[first_ack:]


def outcomes(ctx: Context, accepted: list[str]) -> Outcomes:
    ev = ctx.ev
    out = Outcomes()
    for cid in accepted:
        record = ev.records.records.get(cid)
        if record is None or record.get("state") not in TERMINAL:
            out.lost.append(cid)
            continue
        state, error = record["state"], record.get("error")
        out.finals[f"{state}:{error}" if error else state] += 1
        history = states(record)
        names = [s for s, _ in history]
        if state == "completed":
            done_at = next(at for s, at in history if s == "completed")
            out.latencies.append(done_at - ev.submissions[cid].first_at)
        if sent_after_ack(names):
            out.twice.append(cid)
        first_ack = next((i for i, s in enumerate(names) if s in ACKED), len(names))
        if (sends := names[:first_ack].count("sent")) > 1:
            out.redelivered_commands += 1
            out.redelivered_sends += sends - 1
        if error == "undelivered":
            out.undelivered.append(cid)
        if error == "execution_timeout" and any(a[0] == "completed" for a in ctx.acks.get(cid, [])):
            out.window.append(cid)
        # Events and history carry the same `at` strings: what the observer missed is the difference.
        seen = {(e[0], e[3]) for e in ev.observer.events.get(cid, [])}
        expected = {(h["state"], h["at"]) for h in record.get("history", [])}
        out.missed_events += len(expected - seen)
        out.commands_with_gaps += bool(expected - seen)
        out.events_not_in_history += len(seen - expected)
    return out


def twice_by_events(ctx: Context) -> list[str]:
    """`sent` after an acked state in the events caught live (a check independent of the store),
    in the order of their `at` (as times: ISO text leaves the fraction out of a whole second, so
    "...22Z" sorts after "...22.03Z" as text)."""
    return [
        cid
        for cid, events in ctx.ev.observer.events.items()
        if sent_after_ack([e[0] for e in sorted(events, key=lambda e: _when(e[3]))])
    ]


def _when(at: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(at))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def agent_duplicates(ctx: Context) -> tuple[list[str], list[str]]:
    """Commands handed again to an agent that had executed them, split by what the store did: a
    send decided after an ack of the command was applied, or a frame with no send of its own behind
    it (a double execution either way); or a send decided before any ack was applied (the acks were
    lost or still on their way: an at-least-once redelivery, which a deduping agent absorbs)."""
    twice: list[str] = []
    allowed: list[str] = []
    for cid in ctx.dups:
        history = states(ctx.ev.records.records.get(cid))
        sends = [i for i, (s, _) in enumerate(history) if s == "sent"]
        handed = sorted(d[0] for d in ctx.deliveries.get(cid, []))
        bad = False
        for k, at in enumerate(handed[1:], start=2):
            behind = [i for i in sends if history[i][1] <= at]
            if len(behind) < k:
                bad = True  # more frames than sends: handed again without the store sending it
            elif any(s in ACKED for s, _ in history[: behind[-1]]):
                bad = True
        (twice if bad else allowed).append(cid)
    return twice, allowed


def lost_acks(ctx: Context) -> tuple[int, list[tuple[str, str, float, str]]]:
    """Acks sent, and those whose state never reached their command's history, with their fate."""
    sent = 0
    lost: list[tuple[str, str, float, str]] = []
    for cid, acks in ctx.acks.items():
        history = states(ctx.ev.records.records.get(cid))
        in_history = {s for s, _ in history}
        # How far the command's own acks took it (a `failed` is the timers' doing, not an ack's).
        reached = max((ACK_RANK[s] for s in in_history if s in ACK_RANK and s != "failed"), default=0)
        for status, t, gw, conn, agent in acks:
            sent += 1
            if status in in_history:
                continue
            fate = ctx.ack_fate(t, gw, conn, agent)
            if reached > ACK_RANK[status]:
                # A later ack of the command was applied: this one cost nothing.
                fate = f"{SUPERSEDED}{fate})"
            lost.append((cid, status, t, fate))
    # The unexplained first: they are the ones to look into.
    lost.sort(key=lambda x: (x[3] != "unexplained", x[3].startswith(SUPERSEDED), x[2]))
    return sent, lost


def edge_verdict(ctx: Context) -> tuple[Figures, Anomalies]:
    ev = ctx.ev
    subs = ev.submissions
    accepted = [cid for cid, s in subs.items() if s.accepted_at is not None]
    refused = Counter(s.refused for s in subs.values() if s.accepted_at is None and s.refused)
    unconfirmed = [cid for cid, s in subs.items() if s.accepted_at is None and cid in ev.records.records]
    # Answered with an error (not a timeout the caller gave up on), yet stored: a caller told
    # `not_found` or `conflict` may submit it again under a new id, and it runs twice.
    refused_stored = [cid for cid in unconfirmed if subs[cid].refused != "gave_up"]
    out = outcomes(ctx, accepted)
    by_events = twice_by_events(ctx)
    dup_applied, dup_lost = agent_duplicates(ctx)
    twice = sorted(set(out.twice) | set(by_events) | set(dup_applied))
    acks_sent, acks_lost = lost_acks(ctx)
    # Why a window hit's acks died: the fate of the first of them that never reached the store.
    first_lost: dict[str, str] = {}
    for cid, _, _, fate in sorted(acks_lost, key=lambda x: x[2], reverse=True):
        if fate.startswith(SUPERSEDED):
            fate = fate[len(SUPERSEDED) : -1]
        first_lost[cid] = fate
    figures: Figures = {
        "submitted": len(subs),
        "accepted": len(accepted),
        "accepted_after_retry": sum(1 for c in accepted if len(subs[c].tries) > 1),
        "retried_submits": sum(len(s.tries) - 1 for s in subs.values()),
        "not_accepted": dict(refused),
        "stored_but_unconfirmed": len(unconfirmed),
        "refused_yet_stored": len(refused_stored),
        "final_states": dict(out.finals),
        "completed": out.finals.get("completed", 0),
        "lost": len(out.lost),
        "executed_twice": len(twice),
        "executed_twice_by_history": len(out.twice),
        "executed_twice_by_events": len(by_events),
        "redeliveries_before_ack": {
            "commands": out.redelivered_commands,
            "extra_sends": out.redelivered_sends,
        },
        "agent_duplicates": {
            "handed_again": sum(len(d) for d in ctx.dups.values()),
            "commands": len(ctx.dups),
            "sent_again_after_an_applied_ack": len(dup_applied),
            "sent_again_before_any_ack_applied": len(dup_lost),
        },
        "undelivered": len(out.undelivered),
        "ack_window_hits": len(out.window),
        "ack_window_hits_by_cause": dict(Counter(first_lost.get(c, "no ack lost?") for c in out.window)),
        "acks_sent": acks_sent,
        "acks_never_applied": len(acks_lost),
        "acks_never_applied_by_cause": dict(Counter(fate for *_, fate in acks_lost)),
        "latency_submit_to_completed_s": {
            "p50": rounded(percentile(out.latencies, 0.5)),
            "p99": rounded(percentile(out.latencies, 0.99)),
            "max": rounded(max(out.latencies) if out.latencies else None),
        },
        "observer": {
            "events": ev.observer.count,
            "events_missed": out.missed_events,
            "commands_with_gaps": out.commands_with_gaps,
            "events_not_in_history": out.events_not_in_history,
        },
        "unreadable_records": len(ev.records.unreadable),
        # Unfinished commands in the store at the end, and in each dispatcher's own view of it.
        "unfinished_in_store": sum(1 for r in ev.records.records.values() if r.get("state") not in TERMINAL),
        "unfinished_in_dispatcher_views": ev.dispatcher_views,
    }
    limit = EVIDENCE_LIMIT
    anomalies: Anomalies = {
        "lost": [ctx.command(c, "accepted, not final at the verdict") for c in out.lost[:limit]],
        "executed_twice": [ctx.command(c, "handed again after an applied ack") for c in twice[:limit]],
        "ack_window_hits": [
            ctx.command(c, "the agent sent `completed`; the record timed out") for c in out.window[:limit]
        ],
        "undelivered": [ctx.command(c, "failed undelivered") for c in out.undelivered[:limit]],
        "acks_never_applied": [
            {**ctx.command(cid, f"`{status}` ack never applied: {fate}"), "lost_ack_at": ctx.rel(t)}
            for cid, status, t, fate in acks_lost[:limit]
        ],
        "stored_but_unconfirmed": [
            ctx.command(c, f"not accepted ({subs[c].refused}); the store has it") for c in unconfirmed[:limit]
        ],
    }
    return figures, anomalies
