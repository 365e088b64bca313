"""Prometheus metrics: what every service exports, and what every WebSocket gateway exports.

Names follow the Prometheus rules (base units, `_total`, `_seconds`); labels are low-cardinality
enums only: never an agent, session, user or command id. Each service extends these classes with
its own metrics in its `metrics.py`; one registry per service instance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric

from shared.protocol.errors import CloseCode

VERSION = "0.1.0"
# SLO thresholds (0.1 s, 1 s, 5 s, 30 s) sit on bucket boundaries so alerts can use them exactly.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ByLabel:
    """The children of a one-label metric, found by a dictionary lookup: `labels()` re-checks its
    arguments on every call, which adds up at a few calls per frame or per command."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[str, Counter] = {}

    def __call__(self, value: str) -> Counter:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child


class ServiceMetrics:
    """What every service exports: build info, NATS connection health, background tasks, draining."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            "ikiro_build_info", "Build of this process.", ["service", "version"], registry=r
        )
        self.build_info.labels(service=service, version=VERSION).set(1)
        self.nats_connected = Gauge("ikiro_nats_connected", "1 while connected to NATS.", registry=r)
        self.nats_reconnects = Counter("ikiro_nats_reconnects_total", "NATS reconnections.", registry=r)
        self.nats_errors = Counter(
            "ikiro_nats_errors_total", "NATS client errors, slow consumers included.", registry=r
        )
        self.task_failures = Counter(
            "ikiro_task_failures_total",
            "Permanent background tasks that failed and were restarted, by task.",
            ["task"],
            registry=r,
        )
        self.tasks_down = Gauge(
            "ikiro_tasks_down",
            "Permanent background tasks not running now (not ready while > 0).",
            registry=r,
        )
        self.draining = Gauge("ikiro_draining", "1 once shutdown has begun.", registry=r)
        self.http_refused = Counter(
            "ikiro_http_connections_refused_total",
            "HTTP connections closed before a request was served: no whole request within the header "
            "timeout (header_timeout), or a malformed one (malformed).",
            ["reason"],
            registry=r,
        )

    def count_nats_traffic(self, stats: Mapping[str, int]) -> None:
        """Export the NATS client's own message and byte counts (its `stats`), read at scrape time."""
        self.registry.register(_NatsTraffic(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _NatsTraffic:
    def __init__(self, stats: Mapping[str, int]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "ikiro_nats_messages", "Messages through this process's NATS connection.", labels=["direction"]
        )
        volume = CounterMetricFamily(
            "ikiro_nats_payload_bytes",
            "Payload bytes through this process's NATS connection.",
            labels=["direction"],
        )
        for direction in ("in", "out"):
            messages.add_metric([direction], self.stats[f"{direction}_msgs"])
            volume.add_metric([direction], self.stats[f"{direction}_bytes"])
        yield messages
        yield volume


# RFC 6455's registered codes and the contract's own (DESIGN section 6); None: no close frame at all.
COUNTED_CLOSE_CODES = frozenset(range(1000, 1016)) | frozenset(CloseCode) | {None}


class GatewayMetrics(ServiceMetrics):
    """What a WebSocket gateway exports, under its own prefix (`ikiro_edge`, `ikiro_miniapp`)."""

    def __init__(self, service: str, prefix: str, peers: str) -> None:
        super().__init__(service)
        r = self.registry
        self.sockets_open = Gauge(f"{prefix}_sockets_open", f"Open {peers} sockets on this pod.", registry=r)
        self.handshakes = Counter(
            f"{prefix}_handshakes_total", f"{peers} socket upgrades by outcome.", ["outcome"], registry=r
        )
        self.disconnects = Counter(
            f"{prefix}_disconnects_total", f"{peers} sockets closed, by close code.", ["code"], registry=r
        )
        self.frames_in = ByLabel(
            Counter(f"{prefix}_frames_received_total", f"Frames from {peers} by type.", ["type"], registry=r)
        )
        self.frames_out = ByLabel(
            Counter(f"{prefix}_frames_sent_total", f"Frames to {peers} by type.", ["type"], registry=r)
        )
        self.frames_dropped = Counter(
            f"{prefix}_frames_dropped_total",
            f"Frames not sent to a slow {peers} socket, by type.",
            ["type"],
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            f"{prefix}_slow_consumer_closes_total", "Sockets closed for reading too slowly.", registry=r
        )

    def disconnected(self, code: int | None) -> None:
        """Count a closed socket by its close code; a code the peer chose from outside the protocol's
        and the RFC's own set counts as "other", so peers cannot mint label values."""
        label = str(code) if code in COUNTED_CLOSE_CODES else "other"
        self.disconnects.labels(code=label).inc()
