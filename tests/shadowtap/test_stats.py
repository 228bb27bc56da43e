"""The statistics behind the sentinel and the report, against values worked out by hand."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from shadowtap.stats import (
    Z_95,
    PairedCounts,
    bootstrap_mean,
    design_effect,
    detectable_drop,
    drop_p_value,
    holm,
    mcnemar_size,
    overlap,
    paired_drop_interval,
    sign_test,
    sign_test_greater,
    stratified_drop,
    stratified_drop_interval,
    weighted_estimate,
    wilson,
    z_quantile,
)

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------------------------------
# Wilson interval


def test_wilson_interval_of_8_in_10_matches_the_textbook_value() -> None:
    interval = wilson(8, 10)
    assert interval is not None
    assert interval == pytest.approx((0.4902, 0.9433), abs=5e-4)


def test_wilson_interval_follows_the_formula() -> None:
    successes, n, z = 3, 30, Z_95
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(successes, n) == pytest.approx((centre - half, centre + half))


def test_wilson_interval_is_sensible_at_zero_and_one_hundred_percent() -> None:
    none_of_30 = wilson(0, 30)
    all_of_30 = wilson(30, 30)
    assert none_of_30 is not None and all_of_30 is not None
    assert none_of_30[0] == pytest.approx(0.0) and none_of_30[1] == pytest.approx(0.1135, abs=5e-4)
    assert all_of_30[1] == pytest.approx(1.0) and all_of_30[0] == pytest.approx(0.8865, abs=5e-4)
    assert none_of_30[1] == pytest.approx(1 - all_of_30[0])  # symmetric


def test_wilson_interval_narrows_with_a_smaller_z_and_is_none_without_observations() -> None:
    wide, narrow = wilson(8, 10), wilson(8, 10, z=1.0)
    assert wide is not None and narrow is not None
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]
    assert wilson(0, 0) is None


# --------------------------------------------------------------------------------------------------
# Bootstrap interval of a mean


def test_bootstrap_of_constant_data_has_zero_width() -> None:
    assert bootstrap_mean([0.5] * 12, samples=200, seed=1) == (0.5, 0.5)
    assert bootstrap_mean([-1.0], samples=200, seed=1) == (-1.0, -1.0)


def test_bootstrap_interval_holds_the_mean_and_is_reproducible_by_seed() -> None:
    values = [-1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, -1.0, 1.0, 1.0]
    interval = bootstrap_mean(values, samples=500, seed=7)
    assert interval is not None
    low, high = interval
    assert min(values) <= low < sum(values) / len(values) < high <= max(values)
    assert bootstrap_mean(values, samples=500, seed=7) == interval


def test_bootstrap_of_nothing_is_none() -> None:
    assert bootstrap_mean([], samples=200, seed=1) is None


# --------------------------------------------------------------------------------------------------
# Traffic-weighted estimate


def test_weighted_rate_matches_a_hand_computation() -> None:
    # a: 3 of 4 (weight 3), b: 0 of 2 (weight 1): shares 0.75 and 0.25.
    result = weighted_estimate(
        {"a": [1, 1, 1, 0], "b": [0, 0]}, {"a": 3.0, "b": 1.0}, rate=True, samples=200, seed=1
    )
    assert result is not None
    estimate, low, high = result
    assert estimate == pytest.approx(0.75 * 0.75 + 0.25 * 0.0)
    # Agresti-Caffo adjusted rates: a (3 + 2) / (4 + 4) = 0.625, b (0 + 2) / (2 + 4) = 1/3.
    variance = 0.75**2 * 0.625 * 0.375 / 8 + 0.25**2 * (1 / 3) * (2 / 3) / 6
    half = Z_95 * math.sqrt(variance)
    assert (low, high) == pytest.approx((0.5625 - half, 0.5625 + half))


def test_weighted_estimate_renormalises_over_strata_with_observations() -> None:
    result = weighted_estimate(
        {"a": [1.0, 0.0], "b": [1.0], "empty": [], "unweighted": [0.0, 0.0]},
        {"a": 1.0, "b": 1.0, "empty": 2.0, "missing-values": 5.0},
        rate=True,
        samples=200,
        seed=1,
    )
    assert result is not None
    assert result[0] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert weighted_estimate({"a": []}, {"a": 1.0}, rate=True, samples=200, seed=1) is None
    assert weighted_estimate({"a": [1.0]}, {"a": 0.0}, rate=False, samples=200, seed=1) is None


def test_weighted_mean_of_constant_strata_has_zero_width() -> None:
    result = weighted_estimate(
        {"a": [1.0, 1.0, 1.0], "b": [-1.0, -1.0]}, {"a": 0.2, "b": 0.6}, rate=False, samples=300, seed=3
    )
    assert result is not None
    expected = 0.25 * 1.0 + 0.75 * -1.0
    assert result == pytest.approx((expected, expected, expected))


def test_weighted_mean_interval_holds_the_estimate() -> None:
    result = weighted_estimate(
        {"a": [1.0, 0.0, -1.0, 1.0], "b": [0.0, 1.0]}, {"a": 1.0, "b": 1.0}, rate=False, samples=300, seed=3
    )
    assert result is not None
    estimate, low, high = result
    assert estimate == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)
    assert -1.0 <= low <= estimate <= high <= 1.0 and low < high


# --------------------------------------------------------------------------------------------------
# Exact sign test


def _two_sided(better: int, worse: int) -> float:
    n, k = better + worse, min(better, worse)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / (1 << n))


def test_sign_test_against_binomial_sums() -> None:
    # 8 better, 2 worse of 10: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024.
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    # All 6 worse: 2 * C(6,0) / 2^6.
    assert sign_test(0, 6) == pytest.approx(2 / 64)
    # 30 of 30 worse: far beyond any usual alpha.
    assert sign_test(0, 30) == pytest.approx(2 / 2**30)
    for better, worse in ((3, 9), (12, 4), (1, 1), (0, 1)):
        assert sign_test(better, worse) == pytest.approx(_two_sided(better, worse))


def test_sign_test_is_symmetric_and_capped_at_one() -> None:
    assert sign_test(2, 8) == sign_test(8, 2)
    assert sign_test(5, 5) == 1.0  # 2 * 638 / 1024 > 1
    assert sign_test(0, 0) == 1.0


def test_sign_test_is_exact_for_many_discordant_pairs() -> None:
    assert sign_test(600, 600) == 1.0
    assert 0.0 <= sign_test(0, 1100) < 1e-300


# --------------------------------------------------------------------------------------------------
# Interval overlap


def test_overlap_of_intervals() -> None:
    assert overlap((0.1, 0.5), (0.4, 0.9))
    assert overlap((0.1, 0.5), (0.5, 0.9))  # touching
    assert not overlap((0.1, 0.3), (0.4, 0.9))
    assert not overlap((0.4, 0.9), (0.1, 0.3))
    assert overlap(None, (0.4, 0.9)) and overlap((0.1, 0.3), None)


# --------------------------------------------------------------------------------------------------
# The gate's statistics


def test_wilson_matches_newcombes_published_intervals() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval).
    for (successes, n), expected in (
        ((81, 263), (0.2553, 0.3662)),
        ((15, 148), (0.0624, 0.1605)),
        ((0, 20), (0.0, 0.1611)),
        ((1, 29), (0.0061, 0.1718)),
    ):
        assert wilson(successes, n) == pytest.approx(expected, abs=1e-4)


def test_normal_quantiles_match_the_tables() -> None:
    assert z_quantile(0.975) == pytest.approx(Z_95, abs=1e-12)
    assert z_quantile(0.95) == pytest.approx(1.644854, abs=1e-6)
    assert z_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert z_quantile(0.995) == pytest.approx(2.575829, abs=1e-6)


def test_paired_drop_interval_matches_agrestis_approval_ratings() -> None:
    # Agresti, Categorical Data Analysis (2nd ed.), 10.1.1: 1600 people rated the prime minister twice;
    # 150 approved then disapproved, 86 the reverse. Drop 0.04, 95% interval (0.021, 0.059).
    counts = PairedCounts(1600, better=86, worse=150)
    assert counts.drop == pytest.approx(0.04)
    assert paired_drop_interval(counts) == pytest.approx((0.021, 0.059), abs=1e-3)


def test_paired_drop_interval_never_has_zero_width() -> None:
    # No discordant pair at all (every value equal), n = 1 and n = 30: Agresti-Min keeps a width of about
    # ±z/(n + 2), where a percentile bootstrap collapses to a point.
    for n in (1, 30):
        low, high = paired_drop_interval(PairedCounts(n, 0, 0))
        assert low == pytest.approx(-Z_95 / (n + 2), rel=1e-3) and high == pytest.approx(
            Z_95 / (n + 2), rel=1e-3
        )
    low, high = paired_drop_interval(PairedCounts(30, 0, 30))  # every example worse
    assert 0.8 < low < high <= 1.0


def test_stratified_drop_weights_strata_and_reduces_to_one_stratum() -> None:
    one = PairedCounts(40, 2, 6)
    assert stratified_drop_interval([(1.0, one)]) == pytest.approx(paired_drop_interval(one))
    a, b = PairedCounts(100, 5, 15), PairedCounts(30, 0, 0)
    found = stratified_drop([(3.0, a), (1.0, b), (2.0, PairedCounts(0, 0, 0))])
    assert found is not None
    assert found.estimate == pytest.approx(0.75 * 0.10 + 0.25 * 0.0)
    # Agresti-Min per stratum: a (15.5 - 5.5) / 102, b 0; variances (p_w + p_b - d^2) / (n + 2).
    d_a = 10 / 102
    var_a = (15.5 / 102 + 5.5 / 102 - d_a**2) / 102
    var_b = (1 / 32) / 32
    assert found.adjusted == pytest.approx(0.75 * d_a)
    assert found.se == pytest.approx(math.sqrt(0.75**2 * var_a + 0.25**2 * var_b))
    assert stratified_drop([(1.0, PairedCounts(0, 0, 0))]) is None


def test_one_sided_p_values() -> None:
    # Exact within one stratum: 7 of 7 discordant pairs worse: 1 / 2^7.
    assert drop_p_value([(1.0, PairedCounts(30, 0, 7))]) == pytest.approx(1 / 128)
    assert sign_test_greater(4, 0) == pytest.approx(1 / 16)
    assert sign_test_greater(8, 2) == pytest.approx((45 + 10 + 1) / 1024)
    assert sign_test_greater(0, 0) == 1.0
    # Across strata: the adjusted Wald statistic against the normal.
    strata = [(0.5, PairedCounts(100, 2, 12)), (0.5, PairedCounts(100, 3, 9))]
    found = stratified_drop(strata)
    assert found is not None
    assert drop_p_value(strata) == pytest.approx(1 - NormalDist().cdf(found.adjusted / found.se))
    assert drop_p_value([(0.5, PairedCounts(100, 12, 2)), (0.5, PairedCounts(100, 9, 3))]) > 0.99


def test_holm_adjusts_step_down() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06): in given order.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_mcnemar_size_follows_connor() -> None:
    # Connor (1987): n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2, one-sided alpha 0.05,
    # power 0.8, discordance 0.2, drop 0.05: (1.64485 * 0.44721 + 0.84162 * 0.44441)^2 / 0.0025 = 492.5.
    assert mcnemar_size(0.05, 0.2, 0.05, 0.8) == 493
    drop = detectable_drop(493, 0.2, 0.05, 0.8)
    assert drop is not None and drop == pytest.approx(0.05, abs=2e-4)
    with pytest.raises(ValueError, match="drop"):
        mcnemar_size(0.3, 0.2, 0.05, 0.8)


def test_design_effect_of_weighting_by_traffic() -> None:
    assert design_effect({"a": 0.5, "b": 0.5}, {"a": 50, "b": 50}) == pytest.approx(1.0)
    # 90% of traffic in a, but half the set: 0.9^2 / 0.5 + 0.1^2 / 0.5 = 1.64.
    assert design_effect({"a": 0.9, "b": 0.1}, {"a": 50, "b": 50}) == pytest.approx(1.64)
