"""The promotion gate: does the candidate run regress on any failure mode, beyond chance, at a known rate?

The decision rule is in sentinel/decision.py (a paired one-sided test per failure mode on the
traffic-weighted drop, Holm across modes, cells gating only from `min_cell` examples). This module
makes its inputs from two run records, refuses runs that are not like for like, and writes one review
item per example that got worse on what regressed.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from shadowtap.errors import GateError, SetError
from shadowtap.records import utc_now_rfc3339
from shadowtap.sentinel.decision import (
    ALL_STRATA,
    Comparison,
    GateRule,
    StratumData,
    decide,
    required_size,
)
from shadowtap.sentinel.headtohead import HeadToHead
from shadowtap.sentinel.modes import BY_NAME
from shadowtap.sentinel.run import RunRecord
from shadowtap.sentinel.sets import SetRow, read_set
from shadowtap.sentinel.settings import SentinelSettings
from shadowtap.stats import PairedCounts, design_effect

__all__ = [
    "JUDGE_MODE",
    "REVIEW_REASON",
    "Comparison",
    "GateDecision",
    "RegressedExample",
    "Regression",
    "append_review",
    "check_comparable",
    "compare_runs",
    "paired_data",
    "regressed_examples",
    "rule_from_settings",
]

REVIEW_REASON = "sentinel_regression"
JUDGE_MODE = "judge_vs_baseline"
DECODING_KEYS = ("temperature", "seed", "max_tokens")
# Modes with a threshold of their own unless `sentinel.thresholds` names one: exact answers on generated
# probes hardly vary between runs, so a smaller drop is within reach.
MODE_THRESHOLDS = {"reasoning_correct": 3.0}


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
    rule: dict[str, Any]
    comparisons: list[Comparison]
    regressions: list[Regression]
    warnings: list[str]
    excluded_masked: int
    set_size: int
    required_size: int
    judge: NotRequired[HeadToHead | None]
    # The noise floor: each (mode, stratum) drop between the baseline model's own last two runs, when it
    # has two comparable runs; keyed "mode|stratum".
    noise_floor: NotRequired[dict[str, float] | None]


class RunSide(TypedDict):
    """One run's side of a regressed example in the review queue."""

    run_id: str
    model: str
    value: float | None
    answer: str | None


class RegressedExample(TypedDict):
    """A review-queue item: one example that got worse, with every failure mode it got worse on."""

    pair_id: str
    reason: str
    failure_mode: str  # the first of failure_modes (readers of one mode per item)
    failure_modes: list[str]
    changes: dict[str, dict[str, float | None]]
    routed: list[str]  # modes sent here instead of the gate (a judge below its agreement floor)
    stratum: str
    tags: dict[str, str]
    set_version: str
    request: dict[str, Any] | None
    reference: str | None
    expected: str | int | float | None
    baseline: RunSide
    candidate: RunSide
    ts: str


def _differs(baseline: RunRecord, candidate: RunRecord) -> list[tuple[str, Any, Any]]:
    found = []
    for key, what in (
        ("set_version", "set version"),
        ("scorer_config_hash", "scorer configuration"),
        ("scorer_code", "scorer code version"),
        ("prompt_template_hash", "judge prompt template"),
        ("judge_model", "judge model"),
    ):
        if baseline.get(key) != candidate.get(key):
            found.append((what, baseline.get(key), candidate.get(key)))
    base_replay, cand_replay = baseline.get("replay") or {}, candidate.get("replay") or {}
    for key in DECODING_KEYS:
        if base_replay.get(key) != cand_replay.get(key):
            found.append((f"decoding setting {key}", base_replay.get(key), cand_replay.get(key)))
    return found


def check_comparable(
    baseline: RunRecord, candidate: RunRecord, *, allow_revision_change: bool = False
) -> None:
    """Refuse (GateError naming the difference) runs that are not like for like."""
    if baseline["run_id"] == candidate["run_id"]:
        raise GateError(
            f"baseline and candidate are the same run ({baseline['run_id']}): a run compared with itself "
            "says nothing; gate against an earlier run of the model (`--baseline pinned`, or a run id)"
        )
    differences = _differs(baseline, candidate)
    if differences:
        what, before, after = differences[0]
        raise GateError(
            f"runs {baseline['run_id']} and {candidate['run_id']} differ in {what} "
            f"({before} vs {after}): their scores are not comparable"
        )
    before, after = baseline.get("model_revision"), candidate.get("model_revision")
    same_name = baseline["model"] == candidate["model"]
    if same_name and before and after and before != after and not allow_revision_change:
        raise GateError(
            f"model {baseline['model']} reported revision {before} in run {baseline['run_id']} and "
            f"{after} in run {candidate['run_id']}: another model under the same name "
            "(pass --allow-revision-change to gate it as a candidate)"
        )


def rule_from_settings(settings: SentinelSettings, threshold_points: float | None = None) -> GateRule:
    return GateRule(
        alpha=settings.alpha,
        min_cell=settings.min_gating_cell,
        min_drop_points=settings.min_drop_points,
        threshold_points=threshold_points if threshold_points is not None else settings.threshold_points,
        thresholds={**MODE_THRESHOLDS, **settings.thresholds},
    )


def _judged_against(candidate: RunRecord, baseline: RunRecord) -> bool:
    judge = candidate.get("head_to_head")
    return bool(judge) and judge is not None and judge.get("baseline_run") == baseline["run_id"]


def paired_data(
    baseline: RunRecord,
    candidate: RunRecord,
    *,
    include_masked: bool = False,
    review_segments: frozenset[str] = frozenset(),
) -> tuple[dict[str, dict[str, StratumData]], int]:
    """Per failure mode and stratum, the paired counts the rule needs; and how many examples were left
    out because their replayed input had been masked (unless `include_masked`)."""
    base = {e["id"]: e for e in baseline["examples"]}
    shared = [e for e in candidate["examples"] if e["id"] in base]
    kept = [e for e in shared if include_masked or not e.get("masked_input")]
    rows = Counter(e["stratum"] for e in kept)
    segment_of = {e["stratum"]: e.get("segment") for e in kept}
    shares = candidate.get("weights") or {}
    judged = _judged_against(candidate, baseline)
    tallies: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0.0, 0.0]))
    for example in kept:
        for mode in BY_NAME:
            after = example["outcomes"].get(mode)
            before = base[example["id"]]["outcomes"].get(mode)
            if mode == JUDGE_MODE:
                if not judged or after is None:
                    continue
                before = 0.0
            if after is None or before is None:
                continue
            tally = tallies[mode][example["stratum"]]
            tally[0] += 1
            tally[1] += after > before
            tally[2] += after < before
            tally[3] += before
            tally[4] += after
    by_mode = {
        mode: {
            stratum: StratumData(
                PairedCounts(int(t[0]), int(t[1]), int(t[2])),
                rows[stratum],
                float(shares.get(stratum, 0.0)),
                t[3],
                t[4],
                review=mode == JUDGE_MODE and segment_of.get(stratum) in review_segments,
            )
            for stratum, t in strata.items()
        }
        for mode, strata in tallies.items()
    }
    return by_mode, len(shared) - len(kept)


def _required(candidate: RunRecord, settings: SentinelSettings, rule: GateRule, cells: int) -> int:
    allocation = Counter(e["stratum"] for e in candidate["examples"])
    return required_size(
        rule.threshold_points,
        alpha=rule.alpha,
        power=settings.power,
        discordance=settings.expected_discordance,
        cells_gate=cells > 1 and min(allocation.values(), default=0) >= rule.min_cell,
        design_effect=design_effect(candidate.get("weights") or {}, dict(allocation)),
    )


def _judge_warnings(candidate: RunRecord, baseline: RunRecord, settings: SentinelSettings) -> list[str]:
    judge = candidate.get("head_to_head")
    if not judge:
        return []
    if judge.get("baseline_run") != baseline["run_id"]:
        return [
            f"{JUDGE_MODE} not compared: run {candidate['run_id']} was judged against "
            f"{judge.get('baseline_run')}, not {baseline['run_id']}"
        ]
    warnings = []
    if judge.get("flagged"):
        warnings.append(
            f"judge flips: {judge['flips']} of {judge['judged']} verdicts ({judge['flip_share']:.0%}) changed "
            f"with the order, over the {settings.judge_max_flip_share:.0%} allowed: {JUDGE_MODE} goes to "
            "human review, not the gate"
        )
    warnings.extend(judge.get("warnings") or [])
    return warnings


def compare_runs(
    baseline: RunRecord,
    candidate: RunRecord,
    settings: SentinelSettings,
    *,
    threshold_points: float | None = None,
    review_segments: frozenset[str] = frozenset(),
    allow_revision_change: bool = False,
) -> GateDecision:
    """The gate's decision: every (failure mode, stratum) compared, and the regressions among them.

    `threshold_points` overrides the default threshold (modes with their own in `thresholds` keep it).
    `review_segments`: segments where the judge's agreement with humans is below its floor; their
    judge-decided regressions go to human review instead of the gate.
    """
    check_comparable(baseline, candidate, allow_revision_change=allow_revision_change)
    rule = rule_from_settings(settings, threshold_points)
    judge = candidate.get("head_to_head")
    if judge and judge.get("flagged"):
        rule = GateRule(**{**rule.__dict__, "review_modes": frozenset({JUDGE_MODE})})
    by_mode, excluded = paired_data(
        baseline, candidate, include_masked=settings.gate_masked_inputs, review_segments=review_segments
    )
    comparisons = decide(by_mode, rule)
    cells = len({e["stratum"] for e in candidate["examples"]})
    needed = _required(candidate, settings, rule, cells)
    warnings = _judge_warnings(candidate, baseline, settings)
    size = len(candidate["examples"])
    if size < needed:
        warnings.append(
            f"set of {size} examples: a {rule.threshold_points:g}-point drop in one mode is caught with "
            f"{settings.power:.0%} power only from about {needed} examples (see `sentinel build`); "
            "a pass here is weak evidence"
        )
    if excluded:
        warnings.append(f"{excluded} example(s) with masked inputs left out of the gate (gate_masked_inputs)")
    return {
        "ts": time.time(),
        "decided_at": utc_now_rfc3339(),
        "set_version": baseline["set_version"],
        "baseline_run": baseline["run_id"],
        "candidate_run": candidate["run_id"],
        "baseline_model": baseline["model"],
        "candidate_model": candidate["model"],
        "alpha": settings.alpha,
        "rule": {
            "test": "one-sided paired test of the traffic-weighted drop, Holm across modes",
            "min_cell": rule.min_cell,
            "min_drop_points": rule.min_drop_points,
            "threshold_points": rule.threshold_points,
            "gate_masked_inputs": settings.gate_masked_inputs,
        },
        "comparisons": comparisons,
        "regressions": [
            {"failure_mode": c["failure_mode"], "stratum": c["stratum"], "drop_points": c["drop_points"]}
            for c in comparisons
            if c["regressed"]
        ],
        "warnings": warnings,
        "excluded_masked": excluded,
        "set_size": size,
        "required_size": needed,
        "judge": judge,
    }


def _set_rows(set_path: str | None) -> dict[str, SetRow]:
    """The set's examples by id, when the run's set is still where it was (for request and reference)."""
    if not set_path or not Path(set_path).exists():
        return {}
    try:
        return {r["id"]: r for r in read_set(set_path).rows}
    except SetError:
        return {}


def _worse_on(decision: GateDecision) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per mode, the strata that regressed, and the strata routed to review instead of the gate."""
    regressed: dict[str, set[str]] = defaultdict(set)
    routed: dict[str, set[str]] = defaultdict(set)
    for c in decision["comparisons"]:
        if c["regressed"]:
            regressed[c["failure_mode"]].add(c["stratum"])
        elif c["role"] == "review" and c["worse"]:
            routed[c["failure_mode"]].add(c["stratum"])
    return regressed, routed


def _hit(strata: set[str], stratum: str) -> bool:
    return ALL_STRATA in strata or stratum in strata


def regressed_examples(
    decision: GateDecision, baseline: RunRecord, candidate: RunRecord
) -> list[RegressedExample]:
    """Review items: one per example that got worse on a regressed (failure mode, stratum) or on a
    judge verdict routed to review, with every such mode."""
    rows = _set_rows(candidate.get("set_path"))
    base_examples = {e["id"]: e for e in baseline["examples"]}
    regressed, routed = _worse_on(decision)
    items: list[RegressedExample] = []
    with_masked = bool(decision["rule"].get("gate_masked_inputs"))
    for after in sorted(candidate["examples"], key=lambda e: e["id"]):
        before = base_examples.get(after["id"])
        if before is None or (after.get("masked_input") and not with_masked):
            continue
        changes: dict[str, dict[str, float | None]] = {}
        sent: list[str] = []
        for mode in sorted(set(regressed) | set(routed)):
            old = 0.0 if mode == JUDGE_MODE else before["outcomes"].get(mode)
            new = after["outcomes"].get(mode)
            if old is None or new is None or new >= old:
                continue
            if _hit(regressed.get(mode, set()), after["stratum"]):
                changes[mode] = {"baseline": old, "candidate": new}
            elif _hit(routed.get(mode, set()), after["stratum"]):
                changes[mode] = {"baseline": old, "candidate": new}
                sent.append(mode)
        if changes:
            items.append(_item(decision, baseline, candidate, before, after, changes, sent, rows))
    return items


def _item(
    decision: GateDecision,
    baseline: RunRecord,
    candidate: RunRecord,
    before: Any,
    after: Any,
    changes: dict[str, dict[str, float | None]],
    routed: list[str],
    rows: dict[str, SetRow],
) -> RegressedExample:
    row = rows.get(after["id"])
    modes = list(changes)
    first = changes[modes[0]]
    return {
        "pair_id": after["id"],
        "reason": REVIEW_REASON,
        "failure_mode": modes[0],
        "failure_modes": modes,
        "changes": changes,
        "routed": routed,
        "stratum": after["stratum"],
        "tags": (row.get("tags") if row else None) or {},
        "set_version": decision["set_version"],
        "request": row.get("request") if row else None,
        "reference": row.get("reference") if row else None,
        "expected": row.get("expected") if row else None,
        "baseline": {
            "run_id": baseline["run_id"],
            "model": baseline["model"],
            "value": first["baseline"],
            "answer": before["answer"],
        },
        "candidate": {
            "run_id": candidate["run_id"],
            "model": candidate["model"],
            "value": first["candidate"],
            "answer": after["answer"],
        },
        "ts": decision["decided_at"],
    }


def append_review(path: Path, items: list[RegressedExample]) -> None:
    if not items:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")


def noise_floor(
    earlier: RunRecord, baseline: RunRecord, settings: SentinelSettings
) -> dict[str, float] | None:
    """The baseline model against its own earlier run, mode by mode and cell by cell: the drop that
    replaying alone makes (serving nondeterminism, the judge's noise) when nothing changed. None when the
    two runs are not like for like."""
    try:
        aa = compare_runs(earlier, baseline, settings)
    except GateError:
        return None
    return {f"{c['failure_mode']}|{c['stratum']}": c["drop_points"] for c in aa["comparisons"]}
