"""The gate's decision rule: a paired test per failure mode on the traffic-weighted drop, Holm across modes.

For each failure mode the estimand is the traffic-weighted drop D = Σ_h w_h (baseline_h - candidate_h),
each stratum weighted by its share of traffic times the share of its examples the mode applies to, and
estimated on the examples both runs scored (paired). A mode blocks when

    the one-sided test of "the candidate is worse" (H0: D <= 0) rejects at the family-wise level α,
    Holm's step-down across the gating comparisons, and the estimated drop is at least `min_drop_points`.

The traffic-weighted rows (`all`) and the cells each get half of α when any cell gates (Bonferroni
between the two families, Holm within each), so the chance that a candidate as good as the baseline is
blocked anywhere is at most α. A cell gates only with at least `min_cell` paired examples; smaller ones
are diagnostics, shown and never gating. Within one stratum the test is the exact sign test on the
discordant pairs (exact McNemar); across strata the adjusted Wald statistic of the weighted drop
(Agresti-Min: 0.5 added to each cell of every stratum's 2x2 table, so no interval has zero width).

The threshold of a mode (default 5 points) is the drop the set must be able to catch: `required_size`
gives the examples that catch it with the configured power, and the gate warns when the set is smaller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from shadowtap.stats import (
    PairedCounts,
    drop_p_value,
    holm,
    mcnemar_size,
    stratified_drop,
    stratified_drop_interval,
)

__all__ = [
    "ALL_STRATA",
    "DEFAULT_GATED_MODES",
    "Comparison",
    "GateRule",
    "Role",
    "StratumData",
    "decide",
    "required_size",
]

ALL_STRATA = "all"
# How many failure modes a traffic set gates on by default (no_error, format_pass, not_refused,
# reference_match, judge_vs_baseline): the size of Holm's family that `required_size` plans for.
DEFAULT_GATED_MODES = 5

Role = Literal["gate", "diagnostic", "review"]


@dataclass(frozen=True)
class StratumData:
    """One failure mode on one stratum: the paired counts, the stratum's examples and traffic share."""

    counts: PairedCounts
    rows: int  # examples of the stratum in the run (the mode applies to counts.n of them)
    share: float  # the stratum's share of production traffic
    baseline_sum: float = 0.0
    candidate_sum: float = 0.0
    review: bool = False  # routed to human review instead of the gate (judge below its agreement floor)


@dataclass(frozen=True)
class GateRule:
    alpha: float = 0.05
    min_cell: int = 30
    min_drop_points: float = 1.0
    threshold_points: float = 5.0
    thresholds: Mapping[str, float] = field(default_factory=dict)
    review_modes: frozenset[str] = frozenset()  # modes whose every row goes to review (an unreliable judge)

    def threshold(self, mode: str) -> float:
        return self.thresholds.get(mode, self.threshold_points)


class Comparison(TypedDict):
    """One (failure mode, stratum) of the baseline against the candidate."""

    failure_mode: str
    stratum: str
    role: Role
    baseline_score: float
    candidate_score: float
    drop_points: float
    interval_points: tuple[float, float]
    paired: int
    better: int
    worse: int
    weight: float
    p_value: float
    p_adjusted: float | None
    family_alpha: float | None
    threshold_points: float
    regressed: bool


def _weights(strata: Mapping[str, StratumData]) -> dict[str, float]:
    return {
        h: d.share * d.counts.n / d.rows for h, d in strata.items() if d.rows and d.counts.n and not d.review
    }


def _comparison(
    mode: str, stratum: str, parts: list[tuple[float, StratumData]], role: Role, rule: GateRule
) -> Comparison:
    counted = [(w, d.counts) for w, d in parts]
    found = stratified_drop(counted)
    low, high = stratified_drop_interval(counted)
    total = sum(w for w, d in parts if d.counts.n) or 1.0
    base = sum(w / total * d.baseline_sum / d.counts.n for w, d in parts if d.counts.n)
    cand = sum(w / total * d.candidate_sum / d.counts.n for w, d in parts if d.counts.n)
    return {
        "failure_mode": mode,
        "stratum": stratum,
        "role": role,
        "baseline_score": base,
        "candidate_score": cand,
        "drop_points": round((found.estimate if found else 0.0) * 100, 4),
        "interval_points": (round(low * 100, 4), round(high * 100, 4)),
        "paired": sum(d.counts.n for _, d in parts),
        "better": sum(d.counts.better for _, d in parts),
        "worse": sum(d.counts.worse for _, d in parts),
        "weight": round(total, 6),
        "p_value": drop_p_value(counted),
        "p_adjusted": None,
        "family_alpha": None,
        "threshold_points": rule.threshold(mode),
        "regressed": False,
    }


def _mode_comparisons(mode: str, strata: Mapping[str, StratumData], rule: GateRule) -> list[Comparison]:
    weights = _weights(strata)
    gating = [(weights[h], strata[h]) for h in sorted(weights)]
    out: list[Comparison] = []
    if gating:
        n = sum(d.counts.n for _, d in gating)
        role: Role = "review" if mode in rule.review_modes else "gate" if n >= rule.min_cell else "diagnostic"
        out.append(_comparison(mode, ALL_STRATA, gating, role, rule))
    if len(strata) < 2:
        return out
    for stratum in sorted(strata):
        data = strata[stratum]
        if not data.counts.n:
            continue
        cell_role: Role = (
            "review"
            if data.review or mode in rule.review_modes
            else "gate"
            if data.counts.n >= rule.min_cell
            else "diagnostic"
        )
        out.append(_comparison(mode, stratum, [(data.share or 1.0, data)], cell_role, rule))
    return out


def _apply_holm(comparisons: list[Comparison], family_alpha: float, rule: GateRule) -> None:
    adjusted = holm([c["p_value"] for c in comparisons])
    for c, p in zip(comparisons, adjusted, strict=True):
        c["p_adjusted"] = p
        c["family_alpha"] = family_alpha
        c["regressed"] = p <= family_alpha and c["drop_points"] >= rule.min_drop_points


def decide(by_mode: Mapping[str, Mapping[str, StratumData]], rule: GateRule) -> list[Comparison]:
    """Every (failure mode, stratum) compared, `regressed` set on those the rule blocks on."""
    comparisons = [c for mode in sorted(by_mode) for c in _mode_comparisons(mode, by_mode[mode], rule)]
    rows = [c for c in comparisons if c["role"] == "gate" and c["stratum"] == ALL_STRATA]
    cells = [c for c in comparisons if c["role"] == "gate" and c["stratum"] != ALL_STRATA]
    split = rule.alpha / 2 if cells else rule.alpha
    _apply_holm(rows, split, rule)
    if cells:
        _apply_holm(cells, rule.alpha / 2, rule)
    return comparisons


def required_size(
    margin_points: float,
    *,
    alpha: float,
    power: float,
    discordance: float,
    modes: int = DEFAULT_GATED_MODES,
    cells_gate: bool = True,
    design_effect: float = 1.0,
) -> int:
    """Examples a set needs for the gate to catch a drop of `margin_points` in one mode's traffic-weighted
    score with `power`: McNemar's size at Holm's first step (α, halved when cells gate too, over `modes`),
    times the design effect of weighting strata by traffic rather than by how many examples they hold."""
    level = (alpha / 2 if cells_gate else alpha) / max(1, modes)
    drop = margin_points / 100
    return int(mcnemar_size(drop, max(discordance, drop), level, power) * max(1.0, design_effect) + 0.999)
