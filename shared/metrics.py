"""Prometheus metrics of every service, one registry per service.

Names follow the Prometheus rules (base units, `_total`, `_seconds`); labels are low-cardinality
enums only: never an agent, session, user or command id.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

VERSION = "0.1.0"
# SLO thresholds (0.1 s, 1 s, 5 s, 30 s) sit on bucket boundaries so alerts can use them exactly.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """What every service exports: build info, NATS connection health, draining."""

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
        self.draining = Gauge("ikiro_draining", "1 once shutdown has begun.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class EdgeGatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("edge_gateway")
        r = self.registry
        self.sockets_open = Gauge("ikiro_edge_sockets_open", "Open edge agent sockets.", registry=r)
        self.handshakes = Counter(
            "ikiro_edge_handshakes_total", "Edge socket upgrade attempts by outcome.", ["outcome"], registry=r
        )
        self.disconnects = Counter(
            "ikiro_edge_disconnects_total", "Edge sockets closed, by close code.", ["code"], registry=r
        )
        self.frames_in = Counter(
            "ikiro_edge_frames_received_total", "Frames from edge agents by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "ikiro_edge_frames_sent_total", "Frames to edge agents by type.", ["type"], registry=r
        )
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
        self.deliveries = Counter(
            "ikiro_edge_deliveries_total", "Commands handed to a socket, by result.", ["result"], registry=r
        )


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
        self.transitions = Counter(
            "ikiro_command_transitions_total", "Command state changes by new state.", ["state"], registry=r
        )
        self.queue_depth = Gauge(
            "ikiro_command_queue_depth", "Unfinished commands across all agents.", registry=r
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
        self.acks = Counter(
            "ikiro_command_acks_total", "Acks from agents by outcome.", ["outcome"], registry=r
        )
        self.deliveries = Counter(
            "ikiro_command_deliveries_total",
            "Delivery attempts to a gateway, by result.",
            ["result"],
            registry=r,
        )
        self.write_conflicts = Counter(
            "ikiro_command_write_conflicts_total", "Compare-and-set writes retried after a race.", registry=r
        )


class MiniAppGatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("miniapp_gateway")
        r = self.registry
        self.sockets_open = Gauge(
            "ikiro_miniapp_sockets_open", "Open MiniApp sockets on this pod.", registry=r
        )
        self.sessions_active = Gauge(
            "ikiro_miniapp_sessions_active", "Sessions with a socket on this pod.", registry=r
        )
        self.handshakes = Counter(
            "ikiro_miniapp_handshakes_total", "MiniApp socket upgrades by outcome.", ["outcome"], registry=r
        )
        self.disconnects = Counter(
            "ikiro_miniapp_disconnects_total", "MiniApp sockets closed, by close code.", ["code"], registry=r
        )
        self.frames_in = Counter(
            "ikiro_miniapp_frames_received_total", "Frames from browsers by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "ikiro_miniapp_frames_sent_total", "Frames to browsers by type.", ["type"], registry=r
        )
        self.frames_dropped = Counter(
            "ikiro_miniapp_frames_dropped_total",
            "Frames not sent to a slow browser, by type.",
            ["type"],
            registry=r,
        )
        self.fanout = Histogram(
            "ikiro_miniapp_fanout_seconds",
            "From an accepted state update to its frames queued on this pod's sockets.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            "ikiro_miniapp_slow_consumer_closes_total", "Sockets closed for reading too slowly.", registry=r
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
        self.replicas_reaped = Counter(
            "ikiro_miniapp_replicas_reaped_total",
            "Dead gateway replicas whose connections were cleared.",
            registry=r,
        )
