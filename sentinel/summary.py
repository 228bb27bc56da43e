"""A run's examples summarised: per failure mode × stratum, a score, a count and a 95% interval.

Stratum `all` is the aggregate weighted by each stratum's share of production traffic (the set's
manifest) times the share of its examples the mode applies to (a format check asked for on a tenth of
a stratum weighs a tenth of its traffic), not by how many examples the set holds: strata are
over-sampled to reach their minimum. Rates get Wilson intervals; the head-to-head judge's net score
(wins minus losses) the Agresti-Min interval (`shadowtap.stats`).
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from typing import NotRequired, TypedDict

from shadowtap.records import SideError
from shadowtap.sentinel.modes import BY_NAME, FAILURE_MODES, Kind
from shadowtap.stats import (
    PairedCounts,
    paired_drop_interval,
    stratified_drop,
    stratified_drop_interval,
    weighted_estimate,
    wilson,
)

__all__ = [
    "ALL_STRATA",
    "Example",
    "ExampleScore",
    "JudgeVerdict",
    "ResultRow",
    "applicable_weights",
    "summarise",
]

ALL_STRATA = "all"


class ExampleScore(TypedDict):
    """One score of an example, as kept in the run record."""

    scorer: str
    side: str
    outcome: str
    value: float | None


class Example(TypedDict):
    """One replayed example in a run record: its answer and each failure mode's value on it."""

    id: str
    stratum: str
    outcomes: dict[str, float | None]
    answer: str | None
    error: SideError | None
    attempts: int
    scores: list[ExampleScore]
    segment: NotRequired[str | None]
    masked_input: NotRequired[bool]
    probe: NotRequired[str | None]
    judge: NotRequired[JudgeVerdict | None]


class JudgeVerdict(TypedDict):
    """The head-to-head judge on one example: this answer against the baseline run's answer."""

    outcome: str  # candidate_win, baseline_win, tie or flip
    length_ratio: float | None
    identical: bool


class ResultRow(TypedDict):
    """One failure mode on one stratum in a run record."""

    failure_mode: str
    kind: Kind
    stratum: str
    score: float
    count: int
    lower: float | None
    upper: float | None


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def applicable_weights(
    counts: dict[str, int], rows: dict[str, int], shares: dict[str, float]
) -> dict[str, float]:
    """Each stratum's weight for one mode: its traffic share × the share of its examples the mode applies to."""
    return {
        stratum: shares.get(stratum, 0.0) * n / rows[stratum]
        for stratum, n in counts.items()
        if rows.get(stratum) and n > 0
    }


def summarise(
    examples: list[Example], weights: dict[str, float], samples: int
) -> tuple[list[ResultRow], dict[str, ResultRow]]:
    """Per failure mode × stratum: score, count and 95% interval; stratum `all` is weighted by traffic
    and applicability (`applicable_weights`).

    Also returns the set-weighted (pooled) figure per failure mode, for comparison: it over-weights the
    strata that were over-sampled to reach their minimum.
    """
    rows = Counter(e["stratum"] for e in examples)
    results: list[ResultRow] = []
    pooled: dict[str, ResultRow] = {}
    for mode in FAILURE_MODES:
        by_stratum = _values_by_stratum(examples, mode.name)
        if not by_stratum:
            continue
        for stratum in sorted(by_stratum):
            results.append(_row(mode.name, stratum, by_stratum[stratum]))
        mode_weights = applicable_weights({s: len(v) for s, v in by_stratum.items()}, rows, weights)
        aggregate = _aggregate(mode.kind, by_stratum, mode_weights, samples, _seed(mode.name, ALL_STRATA))
        count = sum(len(by_stratum[s]) for s in by_stratum if mode_weights.get(s, 0) > 0)
        if aggregate is not None:
            score, low, high = aggregate
            results.append(_result(mode.name, ALL_STRATA, score, count, (low, high)))
        everything = [v for values in by_stratum.values() for v in values]
        pooled[mode.name] = _row(mode.name, "set", everything)
    return results, pooled


def _net_counts(values: list[float]) -> PairedCounts:
    """Wins and losses of a net score as paired counts (better: wins, worse: losses)."""
    return PairedCounts(len(values), sum(1 for v in values if v > 0), sum(1 for v in values if v < 0))


def _aggregate(
    kind: Kind, by_stratum: dict[str, list[float]], weights: dict[str, float], samples: int, seed: int
) -> tuple[float, float, float] | None:
    if kind == "rate":
        return weighted_estimate(by_stratum, weights, rate=True, samples=samples, seed=seed)
    strata = [(weights.get(s, 0.0), _net_counts(v)) for s, v in by_stratum.items()]
    found = stratified_drop(strata)
    if found is None:
        return None
    low, high = stratified_drop_interval(strata)
    return -found.estimate, -high, -low


def _values_by_stratum(examples: list[Example], mode: str) -> dict[str, list[float]]:
    by_stratum: dict[str, list[float]] = defaultdict(list)
    for example in examples:
        value = example["outcomes"].get(mode)
        if value is not None:
            by_stratum[example["stratum"]].append(value)
    return by_stratum


def _row(mode: str, stratum: str, values: list[float]) -> ResultRow:
    n = len(values)
    score = sum(values) / n
    if BY_NAME[mode].kind == "rate":
        interval = wilson(sum(values), n)
    else:
        low, high = paired_drop_interval(_net_counts(values))
        interval = (-high, -low)
    return _result(mode, stratum, score, n, interval)


def _result(
    mode: str, stratum: str, score: float, count: int, interval: tuple[float, float] | None
) -> ResultRow:
    low, high = interval if interval is not None else (None, None)
    return {
        "failure_mode": mode,
        "kind": BY_NAME[mode].kind,
        "stratum": stratum,
        "score": score,
        "count": count,
        "lower": low,
        "upper": high,
    }
