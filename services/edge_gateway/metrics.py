"""The edge gateway's metrics (DESIGN section 7)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.runtime.metrics import LATENCY_BUCKETS, ByLabel, GatewayMetrics


class EdgeGatewayMetrics(GatewayMetrics):
    def __init__(self) -> None:
        super().__init__("edge_gateway", "ikiro_edge", "edge agent")
        r = self.registry
        self.sync_requests = Counter(
            "ikiro_edge_sync_requests_total",
            "POST /edge/sync requests by HTTP status.",
            ["status"],
            registry=r,
        )
        self.sync_duration = Histogram(
            "ikiro_edge_sync_duration_seconds",
            "POST /edge/sync latency.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deliveries = ByLabel(
            Counter(
                "ikiro_edge_deliveries_total",
                "Commands handed to a socket, by result.",
                ["result"],
                registry=r,
            )
        )
