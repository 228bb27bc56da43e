"""The sentinel's Prometheus metrics, for the Grafana sentinel panels and the sentinel-regression alert.

Gauges, because each is the level at the latest run or gate: the score of a failure mode on a stratum
(`all` is the traffic-weighted aggregate), whether the gate found a regression, and when each model was
last run. Labels are bounded: failure modes are a fixed list, strata come from the set's manifest, set
versions and models change only when someone builds a set or promotes a model. A run-once process
(a CronJob) pushes to a Pushgateway; a scheduled one (`--every`) serves them on `--metrics-port`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

if TYPE_CHECKING:
    from shadowtap.sentinel.gate import GateDecision
    from shadowtap.sentinel.run import RunRecord

PUSH_JOB = "shadowtap_sentinel"


class SentinelMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.score = Gauge(
            "shadowtap_sentinel_score",
            "Sentinel score of a failure mode (higher is better) on a stratum at the latest run; "
            "stratum 'all' is the aggregate weighted by production traffic.",
            ["failure_mode", "set_version", "model", "stratum"],
            registry=r,
        )
        self.score_lower = Gauge(
            "shadowtap_sentinel_score_lower",
            "Lower bound of the 95% interval of shadowtap_sentinel_score.",
            ["failure_mode", "set_version", "model", "stratum"],
            registry=r,
        )
        self.score_upper = Gauge(
            "shadowtap_sentinel_score_upper",
            "Upper bound of the 95% interval of shadowtap_sentinel_score.",
            ["failure_mode", "set_version", "model", "stratum"],
            registry=r,
        )
        self.examples = Gauge(
            "shadowtap_sentinel_examples",
            "Examples scored for a failure mode on a stratum at the latest run.",
            ["failure_mode", "set_version", "model", "stratum"],
            registry=r,
        )
        self.regression = Gauge(
            "shadowtap_sentinel_regression",
            "1 when the latest gate on this set version found this failure mode regressed (any stratum), else 0.",
            ["failure_mode", "set_version"],
            registry=r,
        )
        self.last_run = Gauge(
            "shadowtap_sentinel_last_run_timestamp_seconds",
            "Unix time of the latest sentinel run of a model on a set version.",
            ["set_version", "model"],
            registry=r,
        )

    def record_run(self, run: RunRecord) -> None:
        for row in run["results"]:
            labels = {
                "failure_mode": row["failure_mode"],
                "set_version": run["set_version"],
                "model": run["model"],
                "stratum": row["stratum"],
            }
            self.score.labels(**labels).set(row["score"])
            self.examples.labels(**labels).set(row["count"])
            if row["lower"] is not None and row["upper"] is not None:
                self.score_lower.labels(**labels).set(row["lower"])
                self.score_upper.labels(**labels).set(row["upper"])
        self.last_run.labels(set_version=run["set_version"], model=run["model"]).set(run["ts"])

    def record_gate(self, decision: GateDecision) -> None:
        regressed = {r["failure_mode"] for r in decision["regressions"]}
        for mode in sorted({c["failure_mode"] for c in decision["comparisons"]}):
            self.regression.labels(failure_mode=mode, set_version=decision["set_version"]).set(
                int(mode in regressed)
            )


def push(url: str, registry: CollectorRegistry, grouping_key: dict[str, str], job: str = PUSH_JOB) -> None:
    """Replace this group's metrics on the Pushgateway (one group per set version and model or gate)."""
    push_to_gateway(url, job=job, registry=registry, grouping_key=grouping_key, timeout=30)
