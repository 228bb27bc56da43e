"""Every Prometheus metric shadowtap exports, on one registry that is passed in (testable, no globals).

Conventions (prometheus_client's): counters `shadowtap_<noun>_total`, histograms in seconds, gauges only
for levels. Labels are bounded sets: route (the fixed list below or `other`), side, outcome, reason,
kind, sink, scorer and segment (configured values or `other`). Never user text, ids or model output.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

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


def memoize_labels(holder: object) -> None:
    """Make `labels(...)` on every labelled metric of `holder` a dict lookup after the first call.

    prometheus_client validates the values and takes a lock on each `labels` call, a few microseconds
    that the request path pays several times per request. Label sets are bounded (see above), so the
    cache is too; metrics are never `remove`d or `clear`ed here, so a cached child stays the live one.
    """
    for metric in vars(holder).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels = _memoized(metric.labels)  # type: ignore[method-assign]


def _memoized(labels: Any) -> Any:
    children: dict[tuple[object, ...], Any] = {}

    def cached(*values: str, **by_name: str) -> Any:
        key: tuple[object, ...] = values or tuple(by_name.items())
        child = children.get(key)
        if child is None:
            child = children[key] = labels(*values, **by_name)
        return child

    return cached


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
        self.requests_rejected = Counter(
            "shadowtap_requests_rejected_total",
            "Client requests the proxy refused or cut off itself, by reason: path (leaves /v1/, 400), "
            "method (405), head_too_large (431), body_too_large (413), head_timeout and body_timeout (408), "
            "send_timeout (a client that stopped reading was disconnected), concurrency (503).",
            ["reason"],
            registry=r,
        )
        self.proxy_errors = Counter(
            "shadowtap_proxy_errors_total",
            "Requests the proxy itself failed (answered 500, or cut off a response it had begun), by route.",
            ["route"],
            registry=r,
        )
        self.records_truncated = Counter(
            "shadowtap_records_truncated_total",
            "Pair records in which a side's answer was cut at shadow.max_record_bytes, by side.",
            ["side"],
            registry=r,
        )
        self.incomplete_requests = Counter(
            "shadowtap_incomplete_requests_total",
            "Requests whose client hung up before its whole body was in (a primary request already "
            'streaming that body is abandoned); a hang-up while waiting for the answer is requests_total{status="client_closed"}.',
            registry=r,
        )
        self.request_bodies_dropped = Counter(
            "shadowtap_request_bodies_dropped_total",
            "Bodies sent with GET, HEAD, OPTIONS or TRACE, not forwarded to the primary, by method.",
            ["method"],
            registry=r,
        )
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
            "Mirrorable requests not mirrored, by reason (not_sampled, too_large, content_type, unparseable, "
            "invalid_request, candidate_model_unknown, previous_response, conversation, background, "
            "primary_error, shutdown).",
            ["route", "reason"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "shadowtap_shadow_dropped_total",
            "Sampled requests whose shadow was dropped, by reason (queue_full, recording_backlog, shutdown, internal_error).",
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
            "invalid_response, truncated_stream, stream_error, response_failed, disconnected, transport).",
            ["route", "kind"],
            registry=r,
        )
        self.pairs = Counter(
            "shadowtap_pairs_total", "Pair records assembled and handed to the sink.", ["route"], registry=r
        )

        # Production signals (the primary's, whether or not the request was mirrored)
        self.feedback = Counter(
            "shadowtap_feedback_total",
            "Feedback on the primary's answers posted to /shadowtap/v1/feedback, by signal (thumbs_up, "
            "thumbs_down, escalated, abandoned or a configured name) and segment.",
            ["signal", "segment"],
            registry=r,
        )
        self.feedback_rejected = Counter(
            "shadowtap_feedback_rejected_total",
            "Feedback requests refused, by reason (unauthorized, too_large, invalid).",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "shadowtap_retries_total",
            "Requests that repeat the same last user message of the same conversation key within "
            "retry.window_s: a retry on the earlier exchange, by that exchange's segment.",
            ["segment"],
            registry=r,
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
        memoize_labels(self)


class ScoringMetrics:
    """Metrics of the scorers and the worker; shares the registry of `Metrics` in the embedded mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.scores = Counter(
            "shadowtap_scores_total",
            "Score outcomes by scorer, side (primary, candidate, pair), outcome and segment.",
            ["scorer", "side", "outcome", "segment"],
            registry=r,
        )
        self.scorer_errors = Counter(
            "shadowtap_scorer_errors_total",
            "Pairs a scorer failed on (the other scorers still ran).",
            ["scorer"],
            registry=r,
        )
        self.scoring_latency = Histogram(
            "shadowtap_scoring_seconds",
            "Time one scorer took on one pair.",
            ["scorer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pairs_scored = Counter(
            "shadowtap_pairs_scored_total",
            "Pairs scored, by source (embedded, kafka, file).",
            ["source"],
            registry=r,
        )
        self.pairs_duplicate = Counter(
            "shadowtap_pairs_duplicate_total",
            "Re-delivered pairs that were already scored (not counted again).",
            ["source"],
            registry=r,
        )
        self.scoring_dropped = Counter(
            "shadowtap_scoring_dropped_total",
            "Pairs not scored because the in-process scoring queue was full.",
            registry=r,
        )
        self.scoring_queue_depth = Gauge(
            "shadowtap_scoring_queue_depth", "Pairs waiting for in-process scoring.", registry=r
        )
        self.consumer_lag = Gauge(
            "shadowtap_consumer_lag_records",
            "Pair records on the topic not yet consumed by this worker's group (sum over its partitions).",
            ["topic"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "shadowtap_consumer_assigned_partitions",
            "Partitions of the pairs topic assigned to this worker.",
            ["topic"],
            registry=r,
        )
        self.review_items = Counter(
            "shadowtap_review_items_total",
            "Pairs written to the review queue, by reason.",
            ["reason"],
            registry=r,
        )
        self.ratio = Histogram(
            "shadowtap_pair_ratio",
            "Candidate/primary ratios per pair: latency, ttft, length (answer characters).",
            ["metric", "segment"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        # Judge
        self.judge_calls = Counter(
            "shadowtap_judge_calls_total",
            "Calls to the judge model by outcome (ok, malformed, error, rate_limited).",
            ["outcome"],
            registry=r,
        )
        self.judge_inconsistent = Counter(
            "shadowtap_judge_position_inconsistent_total",
            "Pairs whose verdict flipped when the answers were swapped (counted as ties).",
            ["segment"],
            registry=r,
        )
        self.judge_tokens = Counter(
            "shadowtap_judge_tokens_total",
            "Judge tokens used, by kind (prompt, completion).",
            ["kind"],
            registry=r,
        )
        self.judge_cost = Counter(
            "shadowtap_judge_cost_usd_total",
            "Estimated judge cost in US dollars (prices from config).",
            registry=r,
        )
        self.judge_skipped = Counter(
            "shadowtap_judge_skipped_total",
            "Pairs not judged, by reason (not_sampled, budget_exhausted, missing_answer).",
            ["reason"],
            registry=r,
        )
        self.judge_paused = Gauge(
            "shadowtap_judge_budget_paused",
            "1 while judging is paused because the token budget is spent.",
            registry=r,
        )
        memoize_labels(self)


def segment_label(value: str | None, allowed: frozenset[str] | set[str]) -> str:
    """Bounded `segment` label: a configured value, `none` when absent, `other` for anything else."""
    if value is None or value == "none":
        return "none"
    return value if value in allowed else "other"
