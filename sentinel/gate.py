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
from pathlib import Path
from typing import Any

from shadowtap.errors import GateError, SetError
from shadowtap.records import utc_now_rfc3339
from shadowtap.sentinel.run import ALL_STRATA
from shadowtap.sentinel.sets import read_set
from shadowtap.sentinel.settings import SentinelSettings
from shadowtap.stats import overlap, sign_test

REVIEW_REASON = "sentinel_regression"


def check_comparable(baseline: dict[str, Any], candidate: dict[str, Any]) -> None:
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


def _values(run: dict[str, Any], mode: str) -> dict[str, tuple[str, float]]:
    """Example id -> (stratum, value) for one failure mode."""
    return {
        e["id"]: (e["stratum"], e["outcomes"][mode])
        for e in run["examples"]
        if e["outcomes"].get(mode) is not None
    }


def compare_runs(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    settings: SentinelSettings,
    *,
    threshold_points: float | None = None,
) -> dict[str, Any]:
    """The gate's decision: every (failure mode, stratum) compared, and the regressions among them.

    `threshold_points` overrides the default threshold (modes with their own in `thresholds` keep it).
    """
    check_comparable(baseline, candidate)
    base_rows = {(r["failure_mode"], r["stratum"]): r for r in baseline["results"]}
    cand_rows = {(r["failure_mode"], r["stratum"]): r for r in candidate["results"]}
    comparisons = []
    for key in sorted(base_rows.keys() & cand_rows.keys(), key=lambda k: (k[0], k[1] != ALL_STRATA, k[1])):
        mode, stratum = key
        base, cand = base_rows[key], cand_rows[key]
        threshold = settings.thresholds.get(
            mode, threshold_points if threshold_points is not None else settings.threshold_points
        )
        base_values, cand_values = _values(baseline, mode), _values(candidate, mode)
        better = worse = paired = 0
        for example_id in base_values.keys() & cand_values.keys():
            example_stratum, before = base_values[example_id]
            if stratum != ALL_STRATA and example_stratum != stratum:
                continue
            after = cand_values[example_id][1]
            paired += 1
            better += after > before
            worse += after < before
        drop_points = (base["score"] - cand["score"]) * 100
        p_value = sign_test(better, worse)
        intervals_overlap = overlap(_interval(base), _interval(cand))
        beyond_noise = not intervals_overlap or p_value < settings.alpha
        comparisons.append(
            {
                "failure_mode": mode,
                "stratum": stratum,
                "baseline": {k: base[k] for k in ("score", "lower", "upper", "count")},
                "candidate": {k: cand[k] for k in ("score", "lower", "upper", "count")},
                "drop_points": round(drop_points, 4),
                "threshold_points": threshold,
                "paired": paired,
                "better": better,
                "worse": worse,
                "p_value": p_value,
                "intervals_overlap": intervals_overlap,
                "regressed": drop_points > threshold and beyond_noise,
            }
        )
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


def _interval(row: dict[str, Any]) -> tuple[float, float] | None:
    if row["lower"] is None or row["upper"] is None:
        return None
    return row["lower"], row["upper"]


def regressed_examples(
    decision: dict[str, Any], baseline: dict[str, Any], candidate: dict[str, Any]
) -> list[dict[str, Any]]:
    """Review items: each example that got worse on a regressed (failure mode, stratum), once per mode."""
    rows: dict[str, dict[str, Any]] = {}
    set_path = candidate.get("set_path")
    if set_path and Path(set_path).exists():
        try:
            rows = {r["id"]: r for r in read_set(set_path).rows}
        except SetError:
            rows = {}
    base_examples = {e["id"]: e for e in baseline["examples"]}
    cand_examples = {e["id"]: e for e in candidate["examples"]}
    strata_by_mode: dict[str, set[str]] = defaultdict(set)
    for regression in decision["regressions"]:
        strata_by_mode[regression["failure_mode"]].add(regression["stratum"])
    items = []
    for mode, strata in sorted(strata_by_mode.items()):
        for example_id in sorted(base_examples.keys() & cand_examples.keys()):
            before, after = base_examples[example_id], cand_examples[example_id]
            if ALL_STRATA not in strata and after["stratum"] not in strata:
                continue
            old, new = before["outcomes"].get(mode), after["outcomes"].get(mode)
            if old is None or new is None or new >= old:
                continue
            row = rows.get(example_id, {})
            items.append(
                {
                    "pair_id": example_id,
                    "reason": REVIEW_REASON,
                    "failure_mode": mode,
                    "stratum": after["stratum"],
                    "tags": row.get("tags") or {},
                    "set_version": decision["set_version"],
                    "request": row.get("request"),
                    "reference": row.get("reference"),
                    "expected": row.get("expected"),
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


def append_review(path: Path, items: list[dict[str, Any]]) -> None:
    if not items:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
