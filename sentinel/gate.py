"""The promotion gate: does the candidate run regress on any failure mode, in any stratum, beyond noise?

A (failure mode, stratum) regresses when its score drops by more than the mode's threshold (default 5
points) AND the drop is not noise: the two 95% intervals do not overlap, or the exact paired sign test
on the examples both runs scored (exact McNemar for rates) is significant. Both conditions, so that a
large but noisy drop on a small stratum, or a significant but negligible one, does not block promotion.

Runs are only compared like for like: same set version, scorer configuration and judge prompt.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from shadowtap.errors import GateError, SetError
from shadowtap.records import utc_now_rfc3339
from shadowtap.sentinel.run import RunRecord
from shadowtap.sentinel.sets import SetRow, read_set
from shadowtap.sentinel.settings import SentinelSettings
from shadowtap.sentinel.summary import ALL_STRATA, ResultRow
from shadowtap.stats import overlap, sign_test

__all__ = [
    "REVIEW_REASON",
    "Comparison",
    "GateDecision",
    "RegressedExample",
    "Regression",
    "append_review",
    "check_comparable",
    "compare_runs",
    "regressed_examples",
]

REVIEW_REASON = "sentinel_regression"


class Estimate(TypedDict):
    score: float
    lower: float | None
    upper: float | None
    count: int


class Comparison(TypedDict):
    """One (failure mode, stratum) of the baseline against the candidate."""

    failure_mode: str
    stratum: str
    baseline: Estimate
    candidate: Estimate
    drop_points: float
    threshold_points: float
    paired: int
    better: int
    worse: int
    p_value: float
    intervals_overlap: bool
    regressed: bool


class Regression(TypedDict):
    failure_mode: str
    stratum: str
    drop_points: float


class GateDecision(TypedDict):
    """The gate's decision on a candidate run against a baseline run, as stored in the history."""

    ts: float
    decided_at: str
    set_version: str
    baseline_run: str
    candidate_run: str
    baseline_model: str
    candidate_model: str
    alpha: float
    comparisons: list[Comparison]
    regressions: list[Regression]


class RunSide(TypedDict):
    """One run's side of a regressed example in the review queue."""

    run_id: str
    model: str
    value: float
    answer: str | None


class RegressedExample(TypedDict):
    """A review-queue item: an example that got worse on a regressed (failure mode, stratum)."""

    pair_id: str
    reason: str
    failure_mode: str
    stratum: str
    tags: dict[str, str]
    set_version: str
    request: dict[str, Any] | None
    reference: str | None
    expected: str | int | float | None
    baseline: RunSide
    candidate: RunSide
    ts: str


def check_comparable(baseline: RunRecord, candidate: RunRecord) -> None:
    for key, what in (
        ("set_version", "set version"),
        ("scorer_config_hash", "scorer configuration"),
        ("prompt_template_hash", "judge prompt template"),
        ("judge_model", "judge model"),
    ):
        if baseline.get(key) != candidate.get(key):
            raise GateError(
                f"runs {baseline['run_id']} and {candidate['run_id']} differ in {what} "
                f"({baseline.get(key)} vs {candidate.get(key)}): their scores are not comparable"
            )


def _values(run: RunRecord, mode: str) -> dict[str, tuple[str, float]]:
    """Example id -> (stratum, value) for one failure mode."""
    values: dict[str, tuple[str, float]] = {}
    for e in run["examples"]:
        value = e["outcomes"].get(mode)
        if value is not None:
            values[e["id"]] = (e["stratum"], value)
    return values


@dataclass(frozen=True)
class _Paired:
    paired: int = 0
    better: int = 0
    worse: int = 0


def _paired(
    base_values: dict[str, tuple[str, float]], cand_values: dict[str, tuple[str, float]], stratum: str
) -> _Paired:
    """How many examples of the stratum both runs scored, and on how many the candidate did better/worse."""
    better = worse = paired = 0
    for example_id in base_values.keys() & cand_values.keys():
        example_stratum, before = base_values[example_id]
        if stratum != ALL_STRATA and example_stratum != stratum:
            continue
        after = cand_values[example_id][1]
        paired += 1
        better += after > before
        worse += after < before
    return _Paired(paired, better, worse)


def _estimate(row: ResultRow) -> Estimate:
    return {"score": row["score"], "lower": row["lower"], "upper": row["upper"], "count": row["count"]}


def _interval(row: ResultRow) -> tuple[float, float] | None:
    if row["lower"] is None or row["upper"] is None:
        return None
    return row["lower"], row["upper"]


def _compare(base: ResultRow, cand: ResultRow, counts: _Paired, threshold: float, alpha: float) -> Comparison:
    drop_points = (base["score"] - cand["score"]) * 100
    p_value = sign_test(counts.better, counts.worse)
    intervals_overlap = overlap(_interval(base), _interval(cand))
    beyond_noise = not intervals_overlap or p_value < alpha
    return {
        "failure_mode": base["failure_mode"],
        "stratum": base["stratum"],
        "baseline": _estimate(base),
        "candidate": _estimate(cand),
        "drop_points": round(drop_points, 4),
        "threshold_points": threshold,
        "paired": counts.paired,
        "better": counts.better,
        "worse": counts.worse,
        "p_value": p_value,
        "intervals_overlap": intervals_overlap,
        "regressed": drop_points > threshold and beyond_noise,
    }


def compare_runs(
    baseline: RunRecord,
    candidate: RunRecord,
    settings: SentinelSettings,
    *,
    threshold_points: float | None = None,
) -> GateDecision:
    """The gate's decision: every (failure mode, stratum) compared, and the regressions among them.

    `threshold_points` overrides the default threshold (modes with their own in `thresholds` keep it).
    """
    check_comparable(baseline, candidate)
    base_rows = {(r["failure_mode"], r["stratum"]): r for r in baseline["results"]}
    cand_rows = {(r["failure_mode"], r["stratum"]): r for r in candidate["results"]}
    default = threshold_points if threshold_points is not None else settings.threshold_points
    comparisons: list[Comparison] = []
    for key in sorted(base_rows.keys() & cand_rows.keys(), key=lambda k: (k[0], k[1] != ALL_STRATA, k[1])):
        mode, stratum = key
        counts = _paired(_values(baseline, mode), _values(candidate, mode), stratum)
        threshold = settings.thresholds.get(mode, default)
        comparisons.append(_compare(base_rows[key], cand_rows[key], counts, threshold, settings.alpha))
    return {
        "ts": time.time(),
        "decided_at": utc_now_rfc3339(),
        "set_version": baseline["set_version"],
        "baseline_run": baseline["run_id"],
        "candidate_run": candidate["run_id"],
        "baseline_model": baseline["model"],
        "candidate_model": candidate["model"],
        "alpha": settings.alpha,
        "comparisons": comparisons,
        "regressions": [
            {"failure_mode": c["failure_mode"], "stratum": c["stratum"], "drop_points": c["drop_points"]}
            for c in comparisons
            if c["regressed"]
        ],
    }


def _set_rows(set_path: str | None) -> dict[str, SetRow]:
    """The set's examples by id, when the run's set is still where it was (for request and reference)."""
    if not set_path or not Path(set_path).exists():
        return {}
    try:
        return {r["id"]: r for r in read_set(set_path).rows}
    except SetError:
        return {}


def regressed_examples(
    decision: GateDecision, baseline: RunRecord, candidate: RunRecord
) -> list[RegressedExample]:
    """Review items: each example that got worse on a regressed (failure mode, stratum), once per mode."""
    rows = _set_rows(candidate.get("set_path"))
    base_examples = {e["id"]: e for e in baseline["examples"]}
    cand_examples = {e["id"]: e for e in candidate["examples"]}
    strata_by_mode: dict[str, set[str]] = defaultdict(set)
    for regression in decision["regressions"]:
        strata_by_mode[regression["failure_mode"]].add(regression["stratum"])
    items: list[RegressedExample] = []
    for mode, strata in sorted(strata_by_mode.items()):
        for example_id in sorted(base_examples.keys() & cand_examples.keys()):
            before, after = base_examples[example_id], cand_examples[example_id]
            if ALL_STRATA not in strata and after["stratum"] not in strata:
                continue
            old, new = before["outcomes"].get(mode), after["outcomes"].get(mode)
            if old is None or new is None or new >= old:
                continue
            row = rows.get(example_id)
            items.append(
                {
                    "pair_id": example_id,
                    "reason": REVIEW_REASON,
                    "failure_mode": mode,
                    "stratum": after["stratum"],
                    "tags": (row.get("tags") if row else None) or {},
                    "set_version": decision["set_version"],
                    "request": row.get("request") if row else None,
                    "reference": row.get("reference") if row else None,
                    "expected": row.get("expected") if row else None,
                    "baseline": {
                        "run_id": baseline["run_id"],
                        "model": baseline["model"],
                        "value": old,
                        "answer": before["answer"],
                    },
                    "candidate": {
                        "run_id": candidate["run_id"],
                        "model": candidate["model"],
                        "value": new,
                        "answer": after["answer"],
                    },
                    "ts": decision["decided_at"],
                }
            )
    return items


def append_review(path: Path, items: list[RegressedExample]) -> None:
    if not items:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
