"""Every Prometheus metric shadowtap exports, on one registry that is passed in (testable, no globals).

Conventions (prometheus_client's): counters `shadowtap_<noun>_total`, histograms in seconds, gauges only
for levels. Labels are bounded sets: route (the fixed list below or `other`), side, outcome, reason,
kind, sink, scorer and segment (configured values or `other`). Never user text, ids or model output.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Routes are a closed set so that a client probing random paths cannot grow the series count.
KNOWN_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/responses",
        "/v1/files",
        "/v1/batches",
    }
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 5, 10)


def route_label(path: str) -> str:
    """The bounded `route` label for a request path."""
    if path in KNOWN_ROUTES:
        return path
    for known in KNOWN_ROUTES:
        if path.startswith(known + "/"):
            return known
    return "other"


class Metrics:
    """All shadowtap metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # Request path
        self.requests = Counter(
            "shadowtap_requests_total",
            "Upstream responses by route, side and HTTP status (status 'error' when no response came).",
            ["route", "side", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "shadowtap_upstream_latency_seconds",
            "Time from sending the request upstream to the last byte of its answer, per side.",
            ["route", "side"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "shadowtap_ttft_seconds",
            "Time to first token of streamed answers, per side.",
            ["route", "side"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "shadowtap_proxy_overhead_seconds",
            "Time the proxy itself adds to a user request (total handling time less the primary's time).",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.primary_errors = Counter(
            "shadowtap_primary_errors_total",
            "Primary requests that got no HTTP answer, by kind (connect, timeout, protocol).",
            ["route", "kind"],
            registry=r,
        )

        # Shadow path
        self.shadow_sampled = Counter(
            "shadowtap_shadow_sampled_total", "Requests chosen for mirroring.", ["route"], registry=r
        )
        self.shadow_skipped = Counter(
            "shadowtap_shadow_skipped_total",
            "Mirrorable requests not mirrored, by reason (not_sampled, too_large, unparseable, primary_error, ...).",
            ["route", "reason"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "shadowtap_shadow_dropped_total",
            "Sampled requests whose shadow was dropped, by reason (queue_full, shutdown).",
            ["route", "reason"],
            registry=r,
        )
        self.shadow_queued = Gauge(
            "shadowtap_shadow_queue_depth", "Shadow requests waiting for a free slot.", registry=r
        )
        self.shadow_in_flight = Gauge(
            "shadowtap_shadow_in_flight", "Shadow requests being sent to the candidate now.", registry=r
        )
        self.candidate_errors = Counter(
            "shadowtap_candidate_errors_total",
            "Candidate calls that failed, by kind (connect, timeout, http_4xx, http_429, http_5xx, "
            "invalid_response, truncated_stream, disconnected).",
            ["route", "kind"],
            registry=r,
        )
        self.pairs = Counter(
            "shadowtap_pairs_total", "Pair records assembled and handed to the sink.", ["route"], registry=r
        )

        # Sinks
        self.sink_records = Counter(
            "shadowtap_sink_records_total",
            "Records by sink and outcome: written (delivered), spilled (kept locally for retry), "
            "failed (a delivery attempt failed), dropped (lost, logged loudly).",
            ["sink", "outcome"],
            registry=r,
        )
        self.sink_spill_bytes = Gauge(
            "shadowtap_sink_spill_bytes",
            "Bytes waiting in the sink's local spill file.",
            ["sink"],
            registry=r,
        )
        self.sink_queue_depth = Gauge(
            "shadowtap_sink_queue_depth", "Records waiting to be written by the sink.", ["sink"], registry=r
        )
