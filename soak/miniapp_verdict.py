"""The MiniApp figures: every accepted write kept, every write answered, every member agreeing.

- missing: an accepted update (its echo reached its sender) whose key is not in the final state.
- never answered: neither echoed nor refused for `UNANSWERED_S` while its socket stayed open.
- disagreeing: a member whose state or version differs from the stored one at the end; forks (one
  version carrying two updates across members), updates applied twice, out-of-order deliveries.
- dead replica listed: how long a killed replica's connections stayed among the others' peers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .evidence import EVIDENCE_LIMIT, Context
from .miniapp import UNANSWERED_S, Member

LISTED_CONTRACT_S = 10.0

Figures = dict[str, Any]
Anomalies = dict[str, list[dict[str, Any]]]


def writes(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]:
    """Accepted writes missing from the final state; unanswered writes; unconfirmed writes that
    landed, and that did not."""
    missing: list[dict[str, Any]] = []
    unanswered: list[dict[str, Any]] = []
    landed = dropped = 0
    for member in ctx.ev.miniapp.members:
        final = ctx.ev.finals.get(member.session_id)
        state = final.get("state", {}) if final else {}
        for msg_id in member.accepted:
            if state.get(msg_id) != int(msg_id.rsplit(":", 1)[1]):
                missing.append({"session_id": member.session_id, "client_msg_id": msg_id})
        for msg_id, (sent_at, closed_at, replica) in member.unknown.items():
            landed += msg_id in state
            dropped += msg_id not in state
            if closed_at - sent_at >= UNANSWERED_S:
                unanswered.append(
                    {
                        "session_id": member.session_id,
                        "client_msg_id": msg_id,
                        "replica": ctx.ev.stack.miniapps[replica].name,
                        "sent_at": ctx.rel(sent_at),
                        "waited_s": round(closed_at - sent_at, 1),
                        "landed": msg_id in state,
                        "faults_active": ctx.faults_at(sent_at),
                    }
                )
    return missing, unanswered, landed, dropped


def agreement(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sessions whose members disagree with the stored state; connections listed that nobody holds."""
    by_session: dict[str, list[Member]] = {}
    for member in ctx.ev.miniapp.members:
        by_session.setdefault(member.session_id, []).append(member)
    disagree: list[dict[str, Any]] = []
    ghosts: list[dict[str, Any]] = []
    for session_id, members in by_session.items():
        final = ctx.ev.finals.get(session_id)
        if final is None:
            disagree.append({"session_id": session_id, "why": "sessions.get did not answer"})
            continue
        views = {
            m.user_id: {
                "replica": m.replica,
                "version": m.version,
                "synced": m.synced,
                "same_state": m.state == final.get("state"),
            }
            for m in members
        }
        if any(
            not v["synced"] or v["version"] != final.get("version") or not v["same_state"]
            for v in views.values()
        ):
            disagree.append(
                {"session_id": session_id, "final_version": final.get("version"), "members": views}
            )
        listed = {p["connection_id"] for p in final.get("peers", [])}
        held = {m.connection_id for m in members if m.synced}
        if listed - held:
            ghosts.append({"session_id": session_id, "ghosts": sorted(listed - held)})
    return disagree, ghosts


def ledger(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Versions that carried two updates, and updates that became two versions, across members."""
    forks: list[dict[str, Any]] = []
    doubles: list[dict[str, Any]] = []
    for session_id, seen in ctx.ev.miniapp.ledgers.items():
        for version, msgs in seen.by_version.items():
            if len(msgs) > 1:
                forks.append(
                    {"session_id": session_id, "version": version, "client_msg_ids": sorted(map(str, msgs))}
                )
        for msg_id, versions in seen.by_msg.items():
            if len(versions) > 1:
                doubles.append(
                    {"session_id": session_id, "client_msg_id": msg_id, "versions": sorted(versions)}
                )
    return forks, doubles


def first_per_member(unanswered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first update each member waited for in vain: where its socket stopped answering."""
    first: dict[str, dict[str, Any]] = {}
    for u in sorted(unanswered, key=lambda u: u["sent_at"]):
        first.setdefault(u["client_msg_id"].rsplit(":", 1)[0], u)
    return list(first.values())


def worst(values: list[float | None]) -> float | None:
    """The largest; None when any is unknown (still listed when the measure gave up)."""
    if any(v is None for v in values):
        return None
    return max((v for v in values if v is not None), default=None)


def by_fault(ctx: Context) -> list[dict[str, Any]]:
    """Per fault, what the players felt from its start to 10 s after its end: updates refused (by
    code), sockets closed (by code) and the longest wait for an echo (the longest pause)."""
    members = ctx.ev.miniapp.members
    out = []
    for fault in ctx.ev.faults:
        refused = Counter(str(e[1]) for m in members for e in m.errors if fault.active_at(e[0]))
        closed = Counter(str(c[2]) for m in members for c in m.closes if fault.active_at(c[0]))
        waits = [w for m in members for t, w in m.echo_waits if fault.active_at(t)]
        out.append(
            {
                "fault": fault.name,
                "target": fault.target,
                "updates_refused": dict(refused),
                "sockets_closed": dict(closed),
                "longest_pause_s": round(max(waits), 2) if waits else None,
            }
        )
    return out


def miniapp_verdict(ctx: Context) -> tuple[Figures, Anomalies]:
    load = ctx.ev.miniapp
    missing, unanswered, landed, dropped = writes(ctx)
    disagree, ghosts = agreement(ctx)
    forks, doubles = ledger(ctx)
    figures: Figures = {
        "sessions": len(load.ledgers),
        "members": len(load.members),
        "updates_sent": sum(m.n for m in load.members),
        "accepted": sum(len(m.accepted) for m in load.members),
        "refused": dict(Counter(code for m in load.members for code in m.refused.values())),
        "unconfirmed_landed": landed,
        "unconfirmed_not_landed": dropped,
        "unanswered_over_10s": len(unanswered),
        "members_unanswered": len(first_per_member(unanswered)),
        "ghost_peers_at_end": sum(len(g["ghosts"]) for g in ghosts),
        "missing_from_final_state": len(missing),
        "sessions_disagreeing": len(disagree),
        "forked_versions": len(forks),
        "updates_applied_twice": len(doubles),
        "order_violations": sum(len(m.order_violations) for m in load.members),
        "versions_went_back": sum(len(m.went_back) for m in load.members),
        "closes_by_code": dict(Counter(str(c[2]) for m in load.members for c in m.closes)),
        "by_fault": by_fault(ctx),
        "dead_replica_listed_max_s": {
            "members_view": worst([x["members_view_s"] for x in load.listed if x["connections"]]),
            "sessions_get": worst([x["sessions_get_s"] for x in load.listed if x["connections"]]),
            "contract_s": LISTED_CONTRACT_S,
            "kills": load.listed,
        },
    }
    limit = EVIDENCE_LIMIT
    anomalies: Anomalies = {
        "missing": missing[:limit],
        "unanswered": first_per_member(unanswered)[:limit],
        "ghost_peers": ghosts[:limit],
        "disagreeing_sessions": disagree[:limit],
        "forks": forks[:limit],
        "applied_twice": doubles[:limit],
        "order_violations": [
            {
                "user_id": m.user_id,
                "session_id": m.session_id,
                "violations": [[ctx.rel(t), e, g, c] for t, e, g, c in m.order_violations[:5]],
            }
            for m in load.members
            if m.order_violations
        ][:limit],
        "versions_went_back": [
            {"user_id": m.user_id, "went_back": [[ctx.rel(t), b, v] for t, b, v in m.went_back]}
            for m in load.members
            if m.went_back
        ][:limit],
    }
    return figures, anomalies
