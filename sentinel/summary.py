"""A run's examples summarised: per failure mode × stratum, a score, a count and a 95% interval.

Stratum `all` is the aggregate weighted by each stratum's share of production traffic (the set's
manifest), not by how many examples the set holds: strata are over-sampled to reach their minimum.
Rates get Wilson intervals, means bootstrap intervals (`shadowtap.stats`).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import TypedDict

from shadowtap.records import SideError
from shadowtap.sentinel.modes import BY_NAME, FAILURE_MODES, Kind
from shadowtap.stats import bootstrap_mean, weighted_estimate, wilson

__all__ = ["ALL_STRATA", "Example", "ExampleScore", "ResultRow", "summarise"]

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


def summarise(
    examples: list[Example], weights: dict[str, float], samples: int
) -> tuple[list[ResultRow], dict[str, ResultRow]]:
    """Per failure mode × stratum: score, count and 95% interval; stratum `all` is weighted by traffic.

    Also returns the set-weighted (pooled) figure per failure mode, for comparison: it over-weights the
    strata that were over-sampled to reach their minimum.
    """
    results: list[ResultRow] = []
    pooled: dict[str, ResultRow] = {}
    for mode in FAILURE_MODES:
        by_stratum = _values_by_stratum(examples, mode.name)
        if not by_stratum:
            continue
        for stratum in sorted(by_stratum):
            results.append(_row(mode.name, stratum, by_stratum[stratum], samples))
        aggregate = weighted_estimate(
            by_stratum, weights, rate=mode.kind == "rate", samples=samples, seed=_seed(mode.name, ALL_STRATA)
        )
        count = sum(len(by_stratum[s]) for s in by_stratum if weights.get(s, 0) > 0)
        if aggregate is not None:
            score, low, high = aggregate
            results.append(_result(mode.name, ALL_STRATA, score, count, (low, high)))
        everything = [v for values in by_stratum.values() for v in values]
        pooled[mode.name] = _row(mode.name, "set", everything, samples)
    return results, pooled


def _values_by_stratum(examples: list[Example], mode: str) -> dict[str, list[float]]:
    by_stratum: dict[str, list[float]] = defaultdict(list)
    for example in examples:
        value = example["outcomes"].get(mode)
        if value is not None:
            by_stratum[example["stratum"]].append(value)
    return by_stratum


def _row(mode: str, stratum: str, values: list[float], samples: int) -> ResultRow:
    n = len(values)
    score = sum(values) / n
    if BY_NAME[mode].kind == "rate":
        interval = wilson(sum(values), n)
    else:
        interval = bootstrap_mean(values, samples, _seed(mode, stratum))
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
