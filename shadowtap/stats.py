"""The statistics behind the sentinel's numbers: intervals, a traffic-weighted estimate, paired tests.

Small-sample honest choices: Wilson intervals for rates (sensible at 0% and 100% and for n=30),
percentile bootstrap for means, a stratified interval for the traffic-weighted aggregate, and the exact
sign test for paired comparisons, which on 0/1 outcomes is the exact McNemar test.

The gate's statistics (`PairedCounts` onwards): the drop of a paired 0/1 outcome with the Agresti-Min
interval (0.5 added to each cell of the 2x2 table, so a cell with no discordant pairs still has width),
its traffic-weighted (stratified) version, one-sided p-values (exact sign test within one stratum, the
adjusted Wald statistic across strata), Holm's step-down adjustment, and McNemar sample sizes (Connor 1987).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

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


# --------------------------------------------------------------------------------------------------
# The gate: paired drops, their intervals and tests, Holm, sample sizes

_NORMAL = NormalDist()


def z_quantile(p: float) -> float:
    """The standard normal quantile: z_quantile(0.975) = 1.95996..."""
    return _NORMAL.inv_cdf(p)


@dataclass(frozen=True)
class PairedCounts:
    """A paired comparison on one stratum: `n` examples both sides scored, on `better` of them the
    candidate did better, on `worse` worse (for a head-to-head judge: wins and losses, ties the rest)."""

    n: int
    better: int
    worse: int

    def __post_init__(self) -> None:
        if self.n < 0 or self.better < 0 or self.worse < 0 or self.better + self.worse > self.n:
            raise ValueError(f"paired counts need 0 <= better + worse <= n, got {self}")

    @property
    def drop(self) -> float:
        """(worse - better) / n: how much the candidate's rate fell (positive: worse); 0 with no data."""
        return (self.worse - self.better) / self.n if self.n else 0.0


def _adjusted(counts: PairedCounts) -> tuple[float, float]:
    """Agresti-Min: 0.5 added to each of the 2x2 table's four cells. (adjusted drop, its variance)."""
    total = counts.n + 2
    worse, better = (counts.worse + 0.5) / total, (counts.better + 0.5) / total
    drop = worse - better
    return drop, (worse + better - drop * drop) / total


def paired_drop_interval(counts: PairedCounts, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided interval of the drop (worse - better) / n, Agresti & Min (2005), clipped to [-1, 1].

    Never of zero width: with no discordant pair it is about ±z / (n + 2)."""
    return stratified_drop_interval([(1.0, counts)], confidence)


@dataclass(frozen=True)
class StratifiedDrop:
    """A traffic-weighted drop: Σ w_h × drop_h (weights summing to 1), adjusted, with its standard error."""

    estimate: float  # Σ w_h (worse_h - better_h) / n_h, unadjusted: what is shown
    adjusted: float  # Σ w_h × the Agresti-Min adjusted drop: what is tested
    se: float


def stratified_drop(strata: Sequence[tuple[float, PairedCounts]]) -> StratifiedDrop | None:
    """The weighted drop over the strata with data (weights renormalised over them), or None."""
    present = [(w, c) for w, c in strata if w > 0 and c.n > 0]
    total = sum(w for w, _ in present)
    if not present or total <= 0:
        return None
    estimate = adjusted = variance = 0.0
    for weight, counts in present:
        share = weight / total
        drop, var = _adjusted(counts)
        estimate += share * counts.drop
        adjusted += share * drop
        variance += share * share * var
    return StratifiedDrop(estimate, adjusted, math.sqrt(variance))


def stratified_drop_interval(
    strata: Sequence[tuple[float, PairedCounts]], confidence: float = 0.95
) -> tuple[float, float]:
    """Two-sided interval of the weighted drop (adjusted Wald on the stratified variance); (-1, 1) without data."""
    found = stratified_drop(strata)
    if found is None:
        return -1.0, 1.0
    half = z_quantile(0.5 + confidence / 2) * found.se
    return max(-1.0, found.adjusted - half), min(1.0, found.adjusted + half)


def sign_test_greater(worse: int, better: int) -> float:
    """One-sided exact sign test: P(at least `worse` of the discordant pairs go worse | no change)."""
    n = worse + better
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(worse, n + 1)) / (1 << n)


def drop_p_value(strata: Sequence[tuple[float, PairedCounts]]) -> float:
    """One-sided p-value of "the candidate is worse" (H0: drop <= 0).

    One stratum with data: the exact sign test on its discordant pairs (exact McNemar). Several: the
    adjusted Wald statistic of the weighted drop, adjusted drop / se, against the normal.
    """
    present = [(w, c) for w, c in strata if w > 0 and c.n > 0]
    if not present:
        return 1.0
    if len(present) == 1:
        counts = present[0][1]
        return sign_test_greater(counts.worse, counts.better)
    found = stratified_drop(present)
    assert found is not None  # strata with data and weight are present
    return 1.0 - _NORMAL.cdf(found.adjusted / found.se)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: reject those <= alpha, family-wise."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def mcnemar_size(drop: float, discordance: float, alpha: float, power: float) -> int:
    """Pairs needed for a one-sided level-`alpha` McNemar test to detect `drop` with `power` (Connor 1987):
    n = (z_(1-alpha) √ψ + z_power √(ψ - δ²))² / δ², ψ the share of pairs that are discordant."""
    if not 0 < drop <= discordance <= 1:
        raise ValueError(f"need 0 < drop <= discordance <= 1, got drop {drop}, discordance {discordance}")
    root = z_quantile(1 - alpha) * math.sqrt(discordance) + z_quantile(power) * math.sqrt(
        discordance - drop * drop
    )
    return math.ceil(root * root / (drop * drop))


def detectable_drop(n: float, discordance: float, alpha: float, power: float) -> float | None:
    """The smallest drop a one-sided level-`alpha` test on `n` pairs catches with `power` (inverse of
    `mcnemar_size`, by bisection); None when none below the discordance is."""
    if n <= 0 or discordance <= 0:
        return None
    low, high = 0.0, discordance
    if mcnemar_size(high, discordance, alpha, power) > n:
        return None
    for _ in range(60):
        middle = (low + high) / 2
        if middle > 0 and mcnemar_size(middle, discordance, alpha, power) <= n:
            high = middle
        else:
            low = middle
    return high


def design_effect(weights: Mapping[str, float], allocation: Mapping[str, float]) -> float:
    """Variance of a weighted estimate relative to a simple random sample of the same size: Σ w_h² / a_h,
    with w the (normalised) traffic shares and a the (normalised) shares of the set in each stratum."""
    total_w = sum(w for k, w in weights.items() if allocation.get(k, 0) > 0)
    total_a = sum(a for a in allocation.values() if a > 0)
    if total_w <= 0 or total_a <= 0:
        return 1.0
    return sum(
        (w / total_w) ** 2 / (allocation[k] / total_a) for k, w in weights.items() if allocation.get(k, 0) > 0
    )
