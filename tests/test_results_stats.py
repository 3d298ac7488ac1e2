"""lnrl.stats' ratio-of-sums metrics and Holm's correction, against hand values and the per-question
functions they must reduce to (den = 1)."""

from __future__ import annotations

import numpy as np
import pytest

from lnrl.stats import (bootstrap_ci, holm, mcnemar_exact, paired_diff, paired_ratio_diff, ratio_ci, sign_flip_test,
                        two_way_ci)

X = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1.0])


def test_ratio_with_unit_denominators_is_the_plain_bootstrap():
    """den = 1: sum num / sum den is the mean, and the resamples are drawn identically."""
    one = ratio_ci(X, np.ones(10), n_boot=2000, seed=3)
    ref = bootstrap_ci(X, n_boot=2000, seed=3)
    assert one.method == "ratio_bootstrap" and one.n == 10 and one.n_seeds == 1
    assert (one.value, one.low, one.high) == pytest.approx((ref.value, ref.low, ref.high))
    seeds = {0: X, 1: X[::-1].copy(), 2: np.roll(X, 3)}
    two = ratio_ci(seeds, {s: np.ones(10) for s in seeds}, n_boot=2000, seed=3)
    ref2 = two_way_ci(seeds, n_boot=2000, seed=3)
    assert two.method == "ratio_two_way_bootstrap" and two.n_seeds == 3
    assert (two.value, two.low, two.high) == pytest.approx((ref2.value, ref2.low, ref2.high))


def test_ratio_value_by_hand_and_zero_denominators_dropped():
    """Assessment-like: pairs (2, 1, 4, 1, 0), right (1, 0, 2, 0.5, 0) -> 3.5 / 8 = 0.4375 on 4 questions.
    Two seeds: seed 1 right (2, 1, 4, 1, 0) -> 1.0; the value is the mean of the seed ratios, 0.71875."""
    den = np.array([2, 1, 4, 1, 0.0])
    ci = ratio_ci([1, 0, 2, 0.5, 0], den, n_boot=1000)
    assert ci.value == pytest.approx(3.5 / 8) and ci.n == 4 and ci.low <= 3.5 / 8 <= ci.high
    ci2 = ratio_ci({0: [1, 0, 2, 0.5, 0], 1: [2, 1, 4, 1, 0]}, {0: den, 1: den}, n_boot=1000)
    assert ci2.value == pytest.approx((0.4375 + 1.0) / 2) and ci2.n == 4
    # Every resample of a constant ratio (num = 0.25 den) is 0.25.
    flat = ratio_ci(0.25 * np.array([4.0, 8, 12]), [4.0, 8, 12], n_boot=200)
    assert (flat.low, flat.high) == pytest.approx((0.25, 0.25))


def test_ratio_interval_covers_a_known_ratio():
    """400 seeded samples of 150 questions, den ~ U{1..5} pairs, num ~ Bin(den, 0.3): the interval
    should cover 0.3 in about 95% of samples (the ratio bootstrap is first-order accurate)."""
    rng = np.random.default_rng(0)
    hits = 0
    for r in range(400):
        den = rng.integers(1, 6, size=150).astype(float)
        num = rng.binomial(den.astype(int), 0.3).astype(float)
        ci = ratio_ci(num, den, n_boot=500, seed=r)
        hits += ci.low <= 0.3 <= ci.high
    assert 0.92 <= hits / 400 <= 0.98


def test_paired_ratio_with_unit_denominators_is_paired_diff():
    a, b = np.array([1, 1, 0, 0, 1, 0.0]), np.array([1, 0, 1, 1, 1, 1.0])
    d = paired_ratio_diff(a, np.ones(6), b, np.ones(6), n_boot=1000)
    ref = paired_diff(a, b, n_boot=1000)
    # only A: question 2 (1); only B: questions 3, 4, 6 (3) -> McNemar p = 2 * (1 + 4) / 16 = 0.625
    assert d.test == "mcnemar_exact" and (d.a_only, d.b_only) == (1, 3) and d.p_value == mcnemar_exact(1, 3) == 0.625
    assert (d.diff, d.low, d.high) == pytest.approx((ref.diff, ref.low, ref.high))
    d2 = paired_ratio_diff({0: a, 1: a}, {0: np.ones(6), 1: np.ones(6)}, b, np.ones(6), n_boot=500)
    assert d2.test == "sign_flip_exact" and d2.p_value == pytest.approx(0.625) and d2.two_way is not None


def test_paired_ratio_same_denominators_is_a_sign_flip_on_numerators():
    """Same pairs on both sides: pairs (2, 1, 4, 1); right A (1, 0, 2, 0.5), B (2, 1, 3.5, 0.75) (B's two
    seed means). d = (1, 1, 1.5, 0.25), all positive: only the two all-same-sign patterns of 16 reach
    |sum d| = 3.75 -> p = 2/16. diff = 7.25/8 - 3.5/8 = 0.46875."""
    den = np.array([2, 1, 4, 1.0])
    d = paired_ratio_diff([1, 0, 2, 0.5], den, {0: [2, 1, 3, 0.5], 1: [2, 1, 4, 1]}, {0: den, 1: den}, n_boot=1000)
    assert d.test == "sign_flip_exact" and d.p_value == pytest.approx(0.125) and d.n == 4
    assert d.diff == pytest.approx(((6.5 + 8) / 2 - 3.5) / 8)
    assert d.p_value == pytest.approx(sign_flip_test([1, 1, 1.5, 0.25])[0])


def test_paired_ratio_swap_test_by_hand():
    """Different denominators: A = (num, den) (1, 1), (0, 2); B = (2, 2), (1, 1). T = 3/3 - 1/3 = 2/3.
    Swapping question 1: B (1,1)+(1,1) = 1, A (2,2)+(0,2) = 1/2 -> |T| = 1/2; swapping question 2:
    B 2/4, A 2/2 -> 1/2; swapping both: 1/3 - 1 -> 2/3. Two of four patterns reach 2/3: p = 0.5."""
    d = paired_ratio_diff([1.0, 0.0], [1.0, 2.0], [2.0, 1.0], [2.0, 1.0], n_boot=500)
    assert d.test == "ratio_swap_exact" and d.p_value == pytest.approx(0.5) and d.diff == pytest.approx(2 / 3)
    rng = np.random.default_rng(1)
    den_a, den_b = rng.integers(1, 4, 40).astype(float), rng.integers(1, 4, 40).astype(float)
    mc = paired_ratio_diff(rng.binomial(den_a.astype(int), 0.3), den_a, rng.binomial(den_b.astype(int), 0.6), den_b,
                           n_boot=300, n_perm=2000)
    assert mc.test == "ratio_swap_monte_carlo" and 1 / 2001 <= mc.p_value < 0.01


def test_ratio_inputs_are_checked():
    with pytest.raises(ValueError, match=">= 0"):
        ratio_ci([1.0, 1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="undefined"):
        ratio_ci([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="same seeds"):
        ratio_ci({0: [1.0]}, {1: [1.0]})
    with pytest.raises(ValueError, match="same questions"):
        paired_ratio_diff([1.0], [1.0], [1.0, 0.0], [1.0, 1.0])


def test_holm_by_hand():
    """p = (0.01, 0.04, 0.03, 0.5): sorted 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> 0.09 (monotone),
    0.5*1 = 0.5; returned in input order."""
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3]) == [0.3] and holm([0.6, 0.6]) == [1.0, 1.0] and holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([1.5])
