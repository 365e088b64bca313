"""The MiniApp gateway's metrics (DESIGN section 7)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.runtime.metrics import FAST_BUCKETS, GatewayMetrics


class MiniAppGatewayMetrics(GatewayMetrics):
    def __init__(self) -> None:
        super().__init__("miniapp_gateway", "ikiro_miniapp", "MiniApp")
        r = self.registry
        self.sessions_active = Gauge(
            "ikiro_miniapp_sessions_active", "Sessions with a socket on this pod.", registry=r
        )
        self.fanout = Histogram(
            "ikiro_miniapp_fanout_seconds",
            "From an accepted state update to its frames queued on this pod's sockets.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.state_updates = Counter(
            "ikiro_miniapp_state_updates_total",
            "State updates by source and result.",
            ["source", "result"],
            registry=r,
        )
        self.write_conflicts = Counter(
            "ikiro_miniapp_write_conflicts_total", "Compare-and-set writes retried after a race.", registry=r
        )
        self.state_write_retries = Counter(
            "ikiro_miniapp_state_write_retries_total",
            "Session writes tried again because the store did not answer (a NATS node lost, an election).",
            registry=r,
        )
        self.watcher_catch_ups = Counter(
            "ikiro_miniapp_watcher_catch_ups_total",
            "Session watchers that missed versions and sent them from the bucket's history.",
            registry=r,
        )
        self.watcher_resumes = Counter(
            "ikiro_miniapp_watcher_resumes_total",
            "Session watchers made afresh after missing a version this replica wrote (a consumer lost).",
            registry=r,
        )
        self.replicas_reaped = Counter(
            "ikiro_miniapp_replicas_reaped_total",
            "Dead gateway replicas whose connections were cleared.",
            registry=r,
        )
