"""The statistics behind the sentinel's numbers: intervals, a traffic-weighted estimate, a paired test.

Small-sample honest choices: Wilson intervals for rates (sensible at 0% and 100% and for n=30),
percentile bootstrap for means, a stratified interval for the traffic-weighted aggregate, and the exact
sign test for paired comparisons, which on 0/1 outcomes is the exact McNemar test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z_95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a rate, or None with no observations."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], samples: int, seed: int) -> tuple[float, float] | None:
    """Percentile bootstrap interval (95%) of a mean, or None with no observations."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def weighted_estimate(
    values_by_stratum: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    *,
    rate: bool,
    samples: int,
    seed: int,
) -> tuple[float, float, float] | None:
    """Σ weight × stratum mean, with a 95% interval. None when no weighted stratum has observations.

    Weights are renormalised over the strata that have observations (a stratum with nothing to score
    for this failure mode cannot contribute). For rates the interval is the normal one on the
    stratified variance with each stratum's rate adjusted as (x + 2) / (n + 4) (Agresti-Caffo), so that
    strata at 0% or 100% still carry their uncertainty; for means it is a stratified bootstrap.
    """
    strata = [s for s, v in values_by_stratum.items() if len(v) and weights.get(s, 0) > 0]
    if not strata:
        return None
    total = sum(weights[s] for s in strata)
    share = np.array([weights[s] / total for s in strata])
    arrays = [np.asarray(values_by_stratum[s], dtype=float) for s in strata]
    estimate = float(sum(w * a.mean() for w, a in zip(share, arrays, strict=True)))
    if rate:
        variance = 0.0
        for w, data in zip(share, arrays, strict=True):
            adjusted = (data.sum() + 2) / (data.size + 4)
            variance += w * w * adjusted * (1 - adjusted) / (data.size + 4)
        half = Z_95 * math.sqrt(variance)
        return estimate, max(0.0, estimate - half), min(1.0, estimate + half)
    rng = np.random.default_rng(seed)
    resampled = np.zeros(samples)
    for w, data in zip(share, arrays, strict=True):
        resampled += w * data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return estimate, float(min(low, estimate)), float(max(high, estimate))


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test on the discordant pairs (exact McNemar for 0/1 outcomes)."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2 * tail)


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Whether two intervals share a point; a missing interval overlaps everything (it rules nothing out)."""
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]
