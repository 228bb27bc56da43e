"""Every Prometheus metric shadowtap exports, on one registry that is passed in (testable, no globals).

Conventions (prometheus_client's): counters `shadowtap_<noun>_total`, histograms in seconds, gauges only
for levels. Labels are bounded sets: route (the fixed list below or `other`), side, outcome, reason,
kind, sink, scorer and segment (configured values or `other`). Never user text, ids or model output.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from shadowtap import __version__

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

# The routes that are mirrored (the rest only pass through); their shadow series are created at start-up.
MIRRORED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
SIDES = ("primary", "candidate")

# Bounded label values, created at zero when the metrics are, so that `increase()` sees a first event
# (a series that appears holding 40 reads as no increase at all) and a panel draws a zero line.
REJECTION_REASONS = (
    "path",
    "method",
    "head_too_large",
    "body_too_large",
    "head_timeout",
    "body_timeout",
    "send_timeout",
    "concurrency",
)
PRIMARY_ERROR_KINDS = ("connect", "timeout", "protocol", "disconnected")
SHADOW_SKIP_REASONS = (
    "not_sampled",
    "too_large",
    "content_type",
    "unparseable",
    "invalid_request",
    "candidate_model_unknown",
    "previous_response",
    "conversation",
    "background",
    "primary_error",
    "shutdown",
)
SHADOW_DROP_REASONS = ("queue_full", "recording_backlog", "offload_failed", "shutdown", "internal_error")
CANDIDATE_ERROR_KINDS = (
    "connect",
    "timeout",
    "http_4xx",
    "http_429",
    "http_5xx",
    "invalid_response",
    "truncated_stream",
    "stream_error",
    "response_failed",
    "disconnected",
    "transport",
)
SINK_OUTCOMES = ("written", "spilled", "failed", "dropped")
SCORE_SIDES = ("primary", "candidate", "pair")
JUDGE_CALL_OUTCOMES = ("ok", "malformed", "error", "rate_limited")
JUDGE_SKIP_REASONS = ("not_sampled", "budget_exhausted", "missing_answer", "truncated")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
LOOP_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The proxy's own time: sub-millisecond when healthy, up to seconds when its event loop is blocked.
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
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


def sink_records_metric(registry: CollectorRegistry) -> Counter:
    return Counter(
        "shadowtap_sink_records_total",
        "Records by sink and outcome: written (delivered), spilled (kept locally for retry), "
        "failed (a delivery attempt failed), dropped (lost, logged loudly).",
        ["sink", "outcome"],
        registry=registry,
    )


def sink_queue_depth_metric(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        "shadowtap_sink_queue_depth",
        "Records waiting to be written by the sink.",
        ["sink"],
        registry=registry,
    )


class SinkMetrics:
    """Just the two metrics a sink exports, on a registry of their own: those of the embedded default's
    scoring process, for its score and review files."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sink_records = sink_records_metric(self.registry)
        self.sink_queue_depth = sink_queue_depth_metric(self.registry)

    def initialise_sink(self, name: str) -> None:
        for outcome in SINK_OUTCOMES:
            self.sink_records.labels(sink=name, outcome=outcome)

    def state(self) -> tuple[float, ...]:
        """The record counts: they change as the files are written."""
        return tuple(
            s.value
            for family in self.sink_records.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )


class MergingRegistry(CollectorRegistry):
    """A registry whose collectors may export the same family: its samples are summed into one family.

    The embedded default's scoring runs in a process of its own (`scorers.embedded`), whose figures the
    proxy's `/metrics` shows beside its own: some families (`shadowtap_sink_records_total` for the score
    and review files, every scoring family the proxy starts at zero) have series from both processes.
    Prometheus takes each family once per scrape, so they are joined here; a series both export reads
    the sum (the proxy's copy of a scoring series stays at zero)."""

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        merged: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Any]] = {}
        for family in super().collect():
            first = families.get(family.name)
            if first is None:
                families[family.name] = family
                continue
            samples = merged.get(family.name)
            if samples is None:
                samples = merged[family.name] = {}
                for sample in first.samples:
                    samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = samples.get(key)
                if seen is None:
                    samples[key] = sample
                elif not sample.name.endswith("_created"):  # a creation time is not a count
                    samples[key] = seen._replace(value=seen.value + sample.value)
        for name, family in families.items():
            samples = merged.get(name)
            if samples is None:
                yield family
                continue
            joined = Metric(family.name, family.documentation, family.type, family.unit)
            joined.samples = list(samples.values())
            yield joined


class Metrics:
    """All shadowtap metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else MergingRegistry()
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
            "Time the proxy spends in its own synchronous steps of a request (before the request goes out, "
            "after the answer is in); shadowtap_added_latency_seconds is what the client feels.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "shadowtap_added_latency_seconds",
            "Time a client waited beyond the primary's own time, end to end: from the request's arrival to "
            "its response's last byte, less the time from sending it to the primary to the primary's last byte.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.loop_lag = Gauge(
            "shadowtap_event_loop_lag_seconds",
            "How late the event loop ran a timer: the largest lag sampled over the last 10 seconds.",
            registry=r,
        )
        self.loop_delay = Histogram(
            "shadowtap_event_loop_delay_seconds",
            "Each sample of the event loop's lag (how late a timer ran): the share of samples over 100 ms is "
            "what ShadowProxyEventLoopBlocked pages on.",
            buckets=LOOP_DELAY_BUCKETS,
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
            "Sampled requests whose shadow was dropped, by reason (queue_full, recording_backlog, offload_failed,"
            " shutdown, internal_error).",
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
        self.noise_floor_pairs = Counter(
            "shadowtap_noise_floor_pairs_total",
            "Noise-floor pairs handed to the sink: the primary's answer against its second answer to the same "
            "request (shadow.noise_floor_rate). Not in shadowtap_pairs_total.",
            ["route"],
            registry=r,
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
        self.sink_records = sink_records_metric(r)
        self.sink_spill_bytes = Gauge(
            "shadowtap_sink_spill_bytes",
            "Bytes waiting in the sink's local spill file.",
            ["sink"],
            registry=r,
        )
        self.sink_queue_depth = sink_queue_depth_metric(r)
        register_process_metrics(r)
        memoize_labels(self)
        self._initialise_children()

    def _initialise_children(self) -> None:
        """Every bounded label value at zero (see REJECTION_REASONS)."""
        routes = (*sorted(KNOWN_ROUTES), "other")
        for reason in REJECTION_REASONS:
            self.requests_rejected.labels(reason=reason)
        for route in routes:
            self.proxy_errors.labels(route=route)
            self.added_latency.labels(route=route)
            for kind in PRIMARY_ERROR_KINDS:
                self.primary_errors.labels(route=route, kind=kind)
        for side in SIDES:
            self.records_truncated.labels(side=side)
        for route in MIRRORED_ROUTES:
            self.shadow_sampled.labels(route=route)
            self.pairs.labels(route=route)
            self.requests.labels(route=route, side="candidate", status="error")
            for reason in SHADOW_SKIP_REASONS:
                self.shadow_skipped.labels(route=route, reason=reason)
            for reason in SHADOW_DROP_REASONS:
                self.shadow_dropped.labels(route=route, reason=reason)
            for kind in CANDIDATE_ERROR_KINDS:
                self.candidate_errors.labels(route=route, kind=kind)

    def initialise_segments(self, segments: Iterable[str], signals: Iterable[str]) -> None:
        """Feedback and retries at zero for each configured segment (and `none`, `other`) and signal."""
        labels = (*sorted(set(segments)), "none", "other")
        for segment in labels:
            self.retries.labels(segment=segment)
            for signal in signals:
                self.feedback.labels(signal=signal, segment=segment)

    def initialise_sink(self, name: str) -> None:
        """The configured sink's record outcomes at zero (a first drop is then an increase)."""
        for outcome in SINK_OUTCOMES:
            self.sink_records.labels(sink=name, outcome=outcome)


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
        self.noise_floor_scores = Counter(
            "shadowtap_noise_floor_scores_total",
            "Score outcomes on noise-floor pairs (the primary against itself), labelled as shadowtap_scores_total "
            "is: what each scorer reports when nothing changed. Not in shadowtap_scores_total.",
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
            "Pairs the embedded default's scoring left unscored (they are still in pairs.jsonl): its queue "
            "was full, or the proxy stopped before they were scored.",
            registry=r,
        )
        self.scoring_restarts = Counter(
            "shadowtap_scoring_process_restarts_total",
            "Times the embedded default's scoring process ended unasked and was started again (the pairs "
            "it had in hand are read again from pairs.jsonl).",
            registry=r,
        )
        self.scoring_queue_depth = Gauge(
            "shadowtap_scoring_queue_depth",
            "Pairs the embedded default's scoring process has read from pairs.jsonl and not yet scored.",
            registry=r,
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
            "Pairs not judged, by reason (not_sampled, budget_exhausted, missing_answer, truncated: an answer cut "
            "at the recording limit).",
            ["reason"],
            registry=r,
        )
        self.judge_paused = Gauge(
            "shadowtap_judge_budget_paused",
            "1 while judging is paused because the token budget is spent.",
            registry=r,
        )
        memoize_labels(self)
        for outcome in JUDGE_CALL_OUTCOMES:
            self.judge_calls.labels(outcome=outcome)
        for reason in JUDGE_SKIP_REASONS:
            self.judge_skipped.labels(reason=reason)
        self.scoring_dropped.inc(0)

    def initialise_scorers(
        self, scorers: Iterable[Any], segments: Iterable[str], noise_floor: bool = False
    ) -> None:
        """Zero series for each configured scorer's outcomes, sides and review reasons, per configured
        segment (and `none`, `other`): a segment with no scores then reads 0, which the "insufficient
        data" alerts and panels need, and a first score is an increase. With `noise_floor` (the proxy
        sends noise-floor pairs) the same for shadowtap_noise_floor_scores_total."""
        labels = (*sorted(set(segments)), "none", "other")
        counters = (self.scores, self.noise_floor_scores) if noise_floor else (self.scores,)
        for scorer in scorers:
            self.scorer_errors.labels(scorer=scorer.name)
            for reason in getattr(scorer, "review_reasons", ()):
                self.review_items.labels(reason=reason)
            for segment in labels:
                for side in SCORE_SIDES:
                    for outcome in scorer.outcomes:
                        for counter in counters:
                            counter.labels(scorer=scorer.name, side=side, outcome=outcome, segment=segment)


def register_process_metrics(registry: CollectorRegistry) -> None:
    """process_*, python_gc_*, python_info and shadowtap_build_info on a registry of our own (the
    default registry has the first three; ours is passed in, so they are added here)."""
    if registry.get_sample_value("shadowtap_build_info", _BUILD_LABELS) is not None:
        return  # registered already (a registry takes each name once)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = Gauge(
        "shadowtap_build_info",
        "Always 1; the running shadowtap's version and Python in its labels.",
        ["version", "python"],
        registry=registry,
    )
    build.labels(**_BUILD_LABELS).set(1)


_BUILD_LABELS = {"version": __version__, "python": platform.python_version()}


def segment_label(value: str | None, allowed: frozenset[str] | set[str]) -> str:
    """Bounded `segment` label: a configured value, `none` when absent, `other` for anything else."""
    if value is None or value == "none":
        return "none"
    return value if value in allowed else "other"
