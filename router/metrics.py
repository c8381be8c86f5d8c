"""The router's own Prometheus series, in a registry of its own (not the process-global
one), so that several routers in one test process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplex_router_requests", "Requests answered, by route and status code",
            ["route", "code"], registry=self.registry)
        self.routing = Counter(
            "loraplex_router_routing", "Routing decisions by adapter and outcome (hit: a pod "
            "holding the adapter; miss: none held it; spill: holders too busy; base)",
            ["adapter", "outcome"], registry=self.registry)
        self.retries = Counter(
            "loraplex_router_retries", "Requests sent again to another pod, by reason",
            ["reason"], registry=self.registry)
        self.stream_errors = Counter(
            "loraplex_router_stream_errors", "Responses cut off by a pod after they started",
            registry=self.registry)
        self.upstream_latency = Histogram(
            "loraplex_router_upstream_latency_seconds", "From sending a request to a pod to "
            "its first response bytes", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.request_duration = Histogram(
            "loraplex_router_request_duration_seconds", "Whole request through the router, "
            "until the last byte relayed", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.in_flight = Gauge(
            "loraplex_router_in_flight", "Requests this router has in flight, by pod",
            ["pod"], registry=self.registry)
        self.pods = Gauge(
            "loraplex_router_pods", "Pods known, by whether they are usable",
            ["usable"], registry=self.registry)
        self.placement_reloads = Counter(
            "loraplex_router_placement_reloads", "Placement table reads, by result",
            ["result"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
