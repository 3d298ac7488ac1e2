"""lnrl.stats against values computed by hand (in the docstrings) or by an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lnrl.stats import (
    CI,
    PairedDiff,
    bootstrap_ci,
    format_ci,
    format_diff,
    format_p,
    maj_at_k_values,
    majority_vote,
    mcnemar_exact,
    metric_ci,
    paired_diff,
    pass_at_k,
    pass_at_k_values,
    question_ci,
    seed_ci,
    seed_matrix,
    sign_flip_test,
    t_quantile,
    two_way_ci,
)

# ----------------------------------------------------------------------------- McNemar, sign flips


def test_mcnemar_hand_values():
    """b=10, c=2: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096 = 0.0386.

    b=6, c=0: 2 * C(6,0) / 2^6 = 2/64. b = c: the tail holds at least half the mass -> p = 1.
    b + c = 0: no discordant question, no evidence -> 1.
    """
    assert mcnemar_exact(10, 2) == 158 / 4096
    assert round(mcnemar_exact(10, 2), 4) == 0.0386
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(6, 0) == 2 / 64
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0  # 2 * 1/2
    with pytest.raises(ValueError, match="non-negative integers"):
        mcnemar_exact(-1, 3)


def test_sign_flip_enumerated_by_hand():
    """All 2^m sign patterns, statistic |sum d|.

    d = [1, 2, 3]: sums 6, 4, 2, 0, 0, -2, -4, -6; |s| >= 6 twice -> p = 2/8.
    d = [3, 1, 1, -1], T = 4: 3 + (+-1+-1+-1) in {6, 4 (x3), 2 (x3), 0}, -3 + ... in {0, -2 (x3),
    -4 (x3), -6}; |s| >= 4 in 1 + 3 + 3 + 1 = 8 of 16 -> p = 0.5.
    d = [0.5, 1, 2, -0.25], T = 3.25: only +-(0.5+1+2+0.25) = 3.75 and +-(0.5+1+2-0.25) = 3.25 reach
    it -> 4/16. Zeros do not change the statistic under flips; T = 0 gives p = 1.
    """
    assert sign_flip_test([1, 2, 3]) == (0.25, "exact")
    assert sign_flip_test([3, 1, 1, -1]) == (0.5, "exact")
    assert sign_flip_test([0.5, 1.0, 2.0, -0.25]) == (0.25, "exact")
    assert sign_flip_test([0, 0, 1, 2, 3, 0]) == (0.25, "exact")
    assert sign_flip_test([1, 2, -3]) == (1.0, "exact")
    assert sign_flip_test([0, 0]) == (1.0, "exact")


def test_sign_flip_lattice_equals_enumeration_and_mcnemar():
    """On a lattice the exact law is built by convolution; it must agree with enumeration, and on
    0/1 differences (d = +-1) it is McNemar: |2W - m| >= |b - c| with W ~ Bin(m, 1/2)."""
    assert sign_flip_test([3, 1, 1, -1], unit=1.0) == (0.5, "exact")
    assert sign_flip_test([1.5, 0.5, 0.5, -0.5], unit=0.5) == (0.5, "exact")
    d = np.r_[-np.ones(10), np.ones(2), np.zeros(30)]  # b = 10, c = 2
    p, how = sign_flip_test(d, unit=1.0)
    assert how == "exact" and p == pytest.approx(mcnemar_exact(10, 2), rel=1e-12)
    p, _ = sign_flip_test(np.r_[-np.ones(300), np.ones(260)], unit=1.0)
    assert p == pytest.approx(mcnemar_exact(300, 260), rel=1e-9)
    with pytest.raises(ValueError, match="integer multiples"):
        sign_flip_test([0.3, 1.0], unit=0.5)


def test_sign_flip_monte_carlo_close_to_exact():
    """Forced to Monte Carlo (exact_max=0) on b=10, c=2: within 4 binomial sd of the exact 0.0386;
    and never 0 (p = (1 + hits) / (1 + n_perm))."""
    d = np.r_[-np.ones(10), np.ones(2)]
    n_perm = 20_000
    p, how = sign_flip_test(d, exact_max=0, n_perm=n_perm, seed=3)
    exact = mcnemar_exact(10, 2)
    assert how == "monte_carlo"
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / n_perm)
    p, _ = sign_flip_test(np.ones(40), exact_max=0, n_perm=1000)
    assert p == 1 / 1001


# ----------------------------------------------------------------------------- intervals


def test_bootstrap_of_a_constant_is_zero_width():
    ci = bootstrap_ci([0.25] * 50, n_boot=500)
    assert (ci.value, ci.low, ci.high, ci.n) == (0.25, 0.25, 0.25, 50)
    ci = bootstrap_ci([3.0], n_boot=100)  # one question: every resample is that question
    assert ci.low == ci.high == 3.0


def test_bootstrap_is_deterministic_and_accepts_other_stats():
    x = np.arange(20.0)
    assert bootstrap_ci(x, seed=7, n_boot=2000) == bootstrap_ci(x, seed=7, n_boot=2000)
    med = bootstrap_ci(x, stat=np.median, n_boot=2000)
    assert med.value == 9.5 and med.low < 9.5 < med.high
    assert bootstrap_ci(x, seed=1, n_boot=2000) != bootstrap_ci(x, seed=2, n_boot=2000)


def test_bootstrap_interval_covers_a_known_proportion():
    """R = 1000 seeded samples of n = 200 Bernoulli(0.3); the 95% percentile interval should cover
    0.3 in about 95% of them. The coverage estimate has binomial sd sqrt(.95 * .05 / 1000) = 0.0069;
    the tolerance is 3 sd = 0.021 (the percentile bootstrap's own finite-n under-coverage at
    n = 200 is well under 1 point, inside it)."""
    rng = np.random.default_rng(12345)
    reps, n, p = 1000, 200, 0.3
    covered = 0
    for r in range(reps):
        x = (rng.random(n) < p).astype(float)
        ci = bootstrap_ci(x, n_boot=1000, seed=r)
        covered += ci.low <= p <= ci.high
    sd = math.sqrt(0.95 * 0.05 / reps)
    assert abs(covered / reps - 0.95) <= 3 * sd


def test_seed_t_interval_by_hand():
    """Seed means 0.3 and 0.5: centre 0.4, sd (ddof 1) = sqrt(0.01 + 0.01) = 0.1414, se = 0.1,
    t_{0.975, 1} = tan(0.475 pi) = 12.7062 -> 0.4 +- 1.27062."""
    per_seed = {1: [0.0, 0.0, 0.2, 1.0], 2: [1.0, 0.0, 0.0, 1.0]}  # means 0.3, 0.5
    ci = seed_ci(per_seed)
    assert ci.method == "t_seeds" and (ci.n, ci.n_seeds) == (4, 2)
    assert ci.value == pytest.approx(0.4)
    assert ci.high - ci.value == pytest.approx(math.tan(0.475 * math.pi) * 0.1, rel=1e-9)
    assert seed_ci([0.0, 1.0]) is None
    assert seed_ci({0: [0.0, 1.0]}) is None


def test_two_way_bootstrap_sees_seed_variation():
    """Seed 0 scores 0.2 on every question, seed 1 scores 0.8. Questions alone carry no variation:
    the seed-averaged values are all 0.5 -> zero-width question interval. Resampling the 2 seeds
    gives a mean of 0.2 (prob 1/4), 0.5 (1/2) or 0.8 (1/4), so the 2.5% / 97.5% quantiles are
    0.2 and 0.8."""
    per_seed = {0: [0.2] * 30, 1: [0.8] * 30}
    q = question_ci(per_seed, n_boot=2000)
    assert (q.low, q.high) == pytest.approx((0.5, 0.5)) and q.n_seeds == 2
    tw = two_way_ci(per_seed, n_boot=2000)
    assert tw.method == "two_way_bootstrap" and (tw.n, tw.n_seeds) == (30, 2)
    assert (tw.value, tw.low, tw.high) == pytest.approx((0.5, 0.2, 0.8))
    assert two_way_ci([0.0, 1.0]) is None


def test_two_way_bootstrap_of_one_seed_pattern_is_the_question_bootstrap():
    """Identical seeds: resampling seeds changes nothing, so the two-way interval estimates the same
    law as the question bootstrap (different random draws: equal to within Monte Carlo error)."""
    x = (np.random.default_rng(0).random(400) < 0.4).astype(float)
    tw = two_way_ci({0: x, 1: x, 2: x}, n_boot=4000)
    qb = bootstrap_ci(x, n_boot=4000)
    assert tw.low == pytest.approx(qb.low, abs=0.01) and tw.high == pytest.approx(qb.high, abs=0.01)


def test_metric_ci_picks_the_table_interval():
    x = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert metric_ci(x).method == "bootstrap"
    assert metric_ci({"s0": x}).method == "bootstrap"
    assert metric_ci({"s0": x, "s1": x[::-1]}).method == "two_way_bootstrap"


def test_inputs_are_checked_with_names():
    with pytest.raises(ValueError, match="no questions"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="question index 1"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="lengths per seed"):
        seed_matrix({0: [1.0, 0.0], 7: [1.0]})
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=95)


# ----------------------------------------------------------------------------- paired differences


A = [1.0] * 10 + [0.0] * 2 + [1.0] * 20 + [0.0] * 8  # 40 questions
B = [0.0] * 10 + [1.0] * 2 + [1.0] * 20 + [0.0] * 8  # only A: 10, only B: 2


def test_paired_diff_binary_one_seed_is_mcnemar():
    """B - A = (22 - 30) / 40 = -0.2; discordant (10, 2) -> p = 0.0386."""
    d = paired_diff(A, B, n_boot=2000)
    assert d.test == "mcnemar_exact" and (d.a_only, d.b_only, d.n) == (10, 2, 40)
    assert d.diff == pytest.approx(-0.2)
    assert d.p_value == mcnemar_exact(10, 2)
    assert d.low < -0.2 < d.high < 0 and d.two_way is None


def test_paired_diff_several_seeds_pairs_seed_means():
    """Two identical seeds per side: seed-mean differences are +-1 on the 1/(2*2) lattice, the same
    pattern as one seed, so the exact sign-flip p equals McNemar's; seeds are resampled for
    ``two_way``. Sides may have different numbers of seeds."""
    d = paired_diff({0: A, 1: A}, {5: B, 6: B}, n_boot=2000)
    assert d.test == "sign_flip_exact" and (d.n_seeds_a, d.n_seeds_b) == (2, 2)
    assert d.p_value == pytest.approx(mcnemar_exact(10, 2), rel=1e-12)
    assert d.two_way is not None and d.two_way.low <= -0.2 <= d.two_way.high
    B2 = [0.0] * 10 + [0.0, 1.0] + [1.0] * 20 + [0.0] * 8  # one of the two B-only wins lost
    d3 = paired_diff(A, {0: B, 1: B2, 2: B}, n_boot=500)
    # seed means of B: 2/3 on question 10, 1 on question 11 -> d = -1 (x10), 2/3, 1: lattice 1/3
    assert d3.test == "sign_flip_exact" and d3.diff == pytest.approx((-10 + 2 / 3 + 1) / 40)


def test_paired_diff_real_values_uses_enumeration():
    """Lengths A = 10, 20, 30 and B = 11, 22, 33: d = 1, 2, 3 -> mean 2, p = 2/8 (see above)."""
    d = paired_diff([10, 20, 30], [11, 22, 33], n_boot=1000)
    assert (d.diff, d.p_value, d.test) == (2.0, 0.25, "sign_flip_exact")
    assert d.a_only is None
    many = paired_diff(np.arange(40.0), np.arange(40.0) + np.linspace(1, 3, 40), n_boot=500, n_perm=2000)
    assert many.test == "sign_flip_monte_carlo" and many.p_value == 1 / 2001


def test_paired_diff_needs_the_same_questions():
    with pytest.raises(ValueError, match="same questions"):
        paired_diff([1.0, 0.0], [1.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- pass@k, maj@k


def test_pass_at_k_hand_values():
    """1 - C(n-c, k)/C(n, k): (4,1,1) = 1 - 3/4; (4,1,2) = 1 - C(3,2)/C(4,2) = 1 - 3/6;
    (5,0,3) = 1 - 1 = 0; (5,3,3): only 2 wrong samples, any 3 contain a right one -> 1."""
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    # Large n: the product form never builds C(1000, 500).
    assert 0.0 < pass_at_k(1000, 3, 500) < 1.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_pass_at_k_values_and_mean():
    v = pass_at_k_values([[1, 0, 0, 0], [0, 0, 0, 0, 0], [True, True, True, False, False]], k=1)
    assert v.tolist() == pytest.approx([0.25, 0.0, 0.6])
    assert bootstrap_ci(v, n_boot=200).value == pytest.approx(0.85 / 3)


def _same_number(x: str, y: str) -> bool:
    return x.replace(",", "") == y.replace(",", "")


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_appearance():
    # "1,000" and "1000" vote together: 2 votes each for {1000} and {7}; {1000} appeared first.
    assert majority_vote(["1,000", "7", "1000", "7"], equivalent=_same_number) == "1,000"
    assert majority_vote(["7", "1,000", "1000", "7"], equivalent=_same_number) == "7"
    assert majority_vote(["7", "1,000", "1000"], equivalent=_same_number) == "1,000"  # 2 beat 1
    assert majority_vote([None, None, "3"], equivalent=_same_number) == "3"  # no answer, no vote
    assert majority_vote([None, None], equivalent=_same_number) is None


def test_maj_at_k_uses_the_first_k_answers():
    """First 3 of 5,6,6,5,5 -> 6 wins; all 5 -> 5 wins (3 votes to 2)."""
    answers = [["5", "6", "6", "5", "5"], [None, None, None], ["1,000", "2", "1000"]]
    golds = ["5", "4", "1000"]
    assert maj_at_k_values(answers, golds, 3, equivalent=_same_number).tolist() == [0.0, 0.0, 1.0]
    assert maj_at_k_values(answers[:1], ["5"], 5, equivalent=_same_number).tolist() == [1.0]
    with pytest.raises(ValueError, match="fewer than k=5"):
        maj_at_k_values(answers, golds, 5, equivalent=_same_number)


# ----------------------------------------------------------------------------- t quantile, formatting


def test_t_quantile_closed_forms():
    """df = 1 (Cauchy): tan(pi (q - 1/2)); df = 2: (2q - 1) / sqrt(2 q (1 - q))."""
    for q in (0.6, 0.9, 0.975, 0.995, 0.1):
        assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
        assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-10)
    assert t_quantile(0.5, 7) == 0.0
    # Large df tends to the normal quantile 1.959964.
    assert t_quantile(0.975, 10_000) == pytest.approx(1.959964, abs=1e-3)


def test_t_quantile_against_scipy():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 10, 29, 30, 101):
        for q in (0.9, 0.95, 0.975, 0.995, 0.025):
            assert t_quantile(q, df) == pytest.approx(float(st.t.ppf(q, df)), rel=1e-9)


def test_formatting():
    assert format_ci(CI(0.312, 0.268, 0.358, n=400)) == "0.312 [0.268, 0.358]"
    d = PairedDiff(diff=0.041, low=-0.012, high=0.094, p_value=0.13, n=400, test="mcnemar_exact")
    assert format_diff(d) == "+0.041 [-0.012, 0.094], p = 0.13"
    assert format_p(0.0386) == "p = 0.039"
    assert format_p(0.0004) == "p < 0.001"
    assert format_p(1.0) == "p = 1"
    z = PairedDiff(diff=-0.0001, low=-0.0002, high=0.1, p_value=0.9, n=3, test="sign_flip_exact")
    assert format_diff(z) == "+0.000 [0.000, 0.100], p = 0.9"
