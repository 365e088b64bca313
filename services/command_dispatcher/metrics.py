"""The command dispatcher's metrics (DESIGN section 7)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.runtime.metrics import LATENCY_BUCKETS, ByLabel, ServiceMetrics


class DispatcherMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("command_dispatcher")
        r = self.registry
        self.submitted = Counter(
            "ikiro_commands_submitted_total",
            "Command submissions by type and result.",
            ["command_type", "result"],
            registry=r,
        )
        self.transitions = ByLabel(
            Counter(
                "ikiro_command_transitions_total",
                "Command state changes by new state.",
                ["state"],
                registry=r,
            )
        )
        self.queue_depth = Gauge(
            "ikiro_command_queue_depth",
            "Unfinished commands of the partitions this replica owns.",
            registry=r,
        )
        self.partitions_owned = Gauge(
            "ikiro_dispatcher_partitions_owned",
            "Partitions of the command path this replica owns.",
            registry=r,
        )
        self.time_to_sent = Histogram(
            "ikiro_command_time_to_sent_seconds", "Submit to first send.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.time_to_received = Histogram(
            "ikiro_command_time_to_received_seconds",
            "Submit to first ack.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_final = Histogram(
            "ikiro_command_time_to_final_seconds",
            "Submit to a final state, by that state.",
            ["state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redeliveries = Counter("ikiro_command_redeliveries_total", "Commands sent again.", registry=r)
        self.expirations = Counter("ikiro_command_expirations_total", "Commands expired.", registry=r)
        self.acks = ByLabel(
            Counter("ikiro_command_acks_total", "Acks from agents by outcome.", ["outcome"], registry=r)
        )
        self.deliveries = ByLabel(
            Counter(
                "ikiro_command_deliveries_total",
                "Deliveries by result: sent (handed to the gateway holding the socket), failed (it"
                " had no such socket, or nobody answered), stale (the socket was replaced before),"
                " pulled (by a connect or sync poll).",
                ["result"],
                registry=r,
            )
        )
        self.write_conflicts = Counter(
            "ikiro_command_write_conflicts_total", "Compare-and-set writes retried after a race.", registry=r
        )
