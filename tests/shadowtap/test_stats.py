"""The statistics behind the sentinel and the report, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from shadowtap.stats import Z_95, bootstrap_mean, overlap, sign_test, weighted_estimate, wilson

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
