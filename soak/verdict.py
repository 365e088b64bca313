"""The verdict: the figures of both paths, what fails the run, and the table and JSON they print as.

A run fails on a lost command, a command executed twice, a submit answered with an error whose
command was stored anyway, an accepted MiniApp update missing from the final state, an update
never answered, members that disagree, a hostile request answered outside the contract or a
token in a log; a harness failure (a target that did not recover) fails
it too. Each failing figure comes with evidence in the JSON.
"""

from __future__ import annotations

import json
from typing import Any

from .edge_verdict import edge_verdict
from .evidence import Context, Evidence
from .miniapp_verdict import miniapp_verdict


def judge(ev: Evidence) -> dict[str, Any]:
    ctx = Context(ev)
    edge, edge_anomalies = edge_verdict(ctx)
    mini, mini_anomalies = miniapp_verdict(ctx)
    failures = []
    if edge["lost"]:
        failures.append(f"{edge['lost']} command(s) lost")
    if edge["executed_twice"]:
        failures.append(f"{edge['executed_twice']} command(s) executed twice")
    if edge["refused_yet_stored"]:
        failures.append(f"{edge['refused_yet_stored']} submit(s) answered with an error, yet stored")
    if mini["missing_from_final_state"]:
        failures.append(f"{mini['missing_from_final_state']} accepted MiniApp update(s) missing")
    if mini["unanswered_over_10s"]:
        failures.append(f"{mini['unanswered_over_10s']} MiniApp update(s) neither echoed nor refused")
    disagreements = (
        mini["sessions_disagreeing"]
        + mini["forked_versions"]
        + mini["updates_applied_twice"]
        + mini["order_violations"]
    )
    if disagreements:
        failures.append(f"{disagreements} MiniApp disagreement(s)")
    hostile = ev.intruders
    if hostile["answered_otherwise"]:
        failures.append(f"{hostile['answered_otherwise']} hostile request(s) answered outside the contract")
    if hostile["tokens_in_logs"]:
        failures.append(f"{hostile['tokens_in_logs']} token(s) found in a service log")
    if ev.harness_error:
        failures.append(f"harness: {ev.harness_error}")
    return {
        "ok": not failures,
        "failures": failures,
        "config": ev.config,
        "settle": ev.settle,
        "faults": [
            {
                "name": f.name,
                "target": f.target,
                "at_s": ctx.rel(f.started),
                "took_s": None if f.ended is None else round(f.ended - f.started, 2),
                "details": f.details,
                "error": f.error,
            }
            for f in ev.faults
        ],
        "edge": edge,
        "miniapp": mini,
        "hostile_clients": hostile,
        "service_crashes": [{**c, "at": ctx.rel(c["at"])} for c in ev.crashes],
        "anomalies": {"edge": edge_anomalies, "miniapp": mini_anomalies},
    }


def table(v: dict[str, Any]) -> str:
    e, m = v["edge"], v["miniapp"]
    lat = e["latency_submit_to_completed_s"]
    listed = m["dead_replica_listed_max_s"]
    rows: list[tuple[str, Any]] = [
        ("EDGE COMMANDS", ""),
        ("submitted", e["submitted"]),
        ("accepted (after a retry)", f"{e['accepted']} ({e['accepted_after_retry']})"),
        ("not accepted", e["not_accepted"] or 0),
        ("ANSWERED AN ERROR, YET STORED", e["refused_yet_stored"]),
        ("completed", e["completed"]),
        ("final states", e["final_states"]),
        ("LOST (accepted, not final)", e["lost"]),
        ("EXECUTED TWICE (sent after an ack)", e["executed_twice"]),
        ("redeliveries before any ack (allowed)", e["redeliveries_before_ack"]),
        ("handed again to an agent that ran it", e["agent_duplicates"]),
        ("failed undelivered", e["undelivered"]),
        (
            "ack window hits (execution_timeout)",
            f"{e['ack_window_hits']} {e['ack_window_hits_by_cause'] or ''}",
        ),
        ("acks sent / never applied", f"{e['acks_sent']} / {e['acks_never_applied']}"),
        ("submit -> completed p50 / p99 / max", f"{lat['p50']} s / {lat['p99']} s / {lat['max']} s"),
        ("observer events (missed)", f"{e['observer']['events']} ({e['observer']['events_missed']})"),
        (
            "unfinished: store / dispatcher views",
            f"{e['unfinished_in_store']} / {json.dumps(e['unfinished_in_dispatcher_views'])}",
        ),
        ("MINIAPP", ""),
        ("sessions x members", f"{m['sessions']} x {m['members'] // max(1, m['sessions'])}"),
        ("updates sent / accepted", f"{m['updates_sent']} / {m['accepted']}"),
        (
            "refused; unconfirmed landed / not",
            f"{m['refused'] or 0}; {m['unconfirmed_landed']} / {m['unconfirmed_not_landed']}",
        ),
        ("MISSING from final state", m["missing_from_final_state"]),
        (
            "never answered (>10 s) / ghost peers",
            f"{m['unanswered_over_10s']} from {m['members_unanswered']} member(s)"
            f" / {m['ghost_peers_at_end']}",
        ),
        ("SESSIONS DISAGREEING", m["sessions_disagreeing"]),
        (
            "forks / applied twice / out of order",
            f"{m['forked_versions']} / {m['updates_applied_twice']} / {m['order_violations']}",
        ),
        (
            "dead replica listed, max (view / get)",
            f"{listed['members_view']} s / {listed['sessions_get']} s"
            f" (contract {listed['contract_s']:.0f} s)",
        ),
        ("MINIAPP BY FAULT: REFUSED / CLOSED / LONGEST PAUSE", ""),
        *(
            (
                f"{f['fault']} {f['target']}",
                f"{sum(f['updates_refused'].values())} / {sum(f['sockets_closed'].values())}"
                f" {json.dumps(f['sockets_closed']) if f['sockets_closed'] else ''}"
                f" / {f['longest_pause_s']} s",
            )
            for f in m["by_fault"]
        ),
        ("HOSTILE CLIENTS", ""),
        *(
            (shape, ", ".join(f"{n} {k}" for k, n in counts.items()) or "none sent")
            for shape, counts in v["hostile_clients"]["by_shape"].items()
        ),
        ("ANSWERED OUTSIDE THE CONTRACT", v["hostile_clients"]["answered_otherwise"]),
        ("TOKENS IN LOGS", v["hostile_clients"]["tokens_in_logs"]),
        ("FAULTS", ""),
    ]
    for c in v["service_crashes"]:
        rows.append(
            (f"{c['at']:>7.1f} s  CRASH (not a fault)", f"{c['service']} {c['why']}, exit {c['exit_code']}")
        )
    for f in v["faults"]:
        status = "FAILED: " + f["error"] if f["error"] else f"{f['took_s']} s"
        rows.append((f"{f['at_s']:>7.1f} s  {f['name']}", f"{f['target']}  {status}"))
    rows.append(("VERDICT", "PASS" if v["ok"] else "FAIL: " + "; ".join(v["failures"])))
    width = max(len(k) for k, _ in rows) + 2
    lines = []
    for key, value in rows:
        if value == "" and key.isupper():
            lines.append(f"-- {key} " + "-" * max(0, 60 - len(key)))
        else:
            text = json.dumps(value) if isinstance(value, dict) else str(value)
            lines.append(f"{key:<{width}}{text}")
    return "\n".join(lines)
