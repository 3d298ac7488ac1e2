"""AFT constrained alignment loss.

Sign convention: g_n = dL/ds_n. Gradient descent moves s_n by -lr * g_n, so g_n > 0 pushes the
negative's score down and g_n < 0 pushes it up.
"""

from __future__ import annotations

import math

import pytest
import torch

from lnrl.losses import build_loss
from lnrl.scoring import SeqScores


def scores(values, n=None):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    return SeqScores(x, torch.ones(len(values), dtype=torch.long) if n is None else torch.tensor(n)), x


def aft(constraint, boundary=0.5, normalize="sum"):
    return build_loss("aft", constraint=constraint, boundary=boundary, normalize=normalize)


def test_none_is_softplus_of_score_gap():
    """One positive s_p = -1, one negative s_n = -2: L = log(1 + e^{s_n - s_p}) = softplus(-1)."""
    s, x = scores([-1.0, -2.0])
    out = aft("none")(s, torch.tensor([0, 0]), is_positive=torch.tensor([True, False]))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    out.loss.backward()
    sig = 1 / (1 + math.exp(1.0))  # sigmoid(s_n - s_p)
    assert x.grad.tolist() == pytest.approx([-sig, sig], abs=1e-12)


def test_detached_gives_negatives_no_gradient():
    s, x = scores([-1.0, -2.0, -1.5, -0.5])
    out = aft("detached")(s, torch.tensor([0, 0, 0, 0]), is_positive=torch.tensor([True, False, False, True]))
    out.loss.backward()
    assert x.grad[1] == 0 and x.grad[2] == 0
    assert (x.grad[[0, 3]] < 0).all()
    same, _ = scores([-1.0, -2.0, -1.5, -0.5])  # same value as `none`, only the gradient differs
    ref = aft("none")(same, torch.tensor([0, 0, 0, 0]), is_positive=torch.tensor([True, False, False, True]))
    assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)


def test_boundary_value_and_gradient_by_hand():
    """s_p = -1, boundary 0.5: B = -1.5, T = 2B - s_p = -2. With s_n = -2.5:
    L = log(1 + e^{s_n - s_p} + e^{T - s_n}) = log(1 + e^{-1.5} + e^{0.5}),
    dL/ds_n = (e^{-1.5} - e^{0.5}) / (1 + e^{-1.5} + e^{0.5}) < 0, dL/ds_p = -e^{-1.5} / (same)."""
    s, x = scores([-1.0, -2.5])
    out = aft("boundary")(s, torch.tensor([7, 7]), is_positive=torch.tensor([1, 0]))
    z = 1 + math.exp(-1.5) + math.exp(0.5)
    assert out.loss.item() == pytest.approx(math.log(z), abs=1e-12)
    out.loss.backward()
    assert x.grad.tolist() == pytest.approx([-math.exp(-1.5) / z, (math.exp(-1.5) - math.exp(0.5)) / z], abs=1e-12)
    assert out.metrics["aft/boundary"].item() == pytest.approx(-1.5)
    assert out.metrics["aft/below_boundary"].item() == 1.0


@pytest.mark.parametrize("positives", [[-1.0], [-1.0, -2.0, -0.3]])
def test_boundary_gradient_zero_at_B_negative_below_positive_above(positives):
    """dL/ds_n = sum_p [e^{s_n - s_p} - e^{T_p - s_n}] / Z with T_p = 2B - s_p: every bracket is zero at
    s_n = B = min_p s_p - boundary, negative below B (descent raises s_n), positive above (descent lowers it)."""
    B = min(positives) - 0.5

    def grad_at(s_n):
        s, x = scores(positives + [s_n])
        pos = torch.tensor([True] * len(positives) + [False])
        aft("boundary")(s, torch.zeros(len(positives) + 1, dtype=torch.long), is_positive=pos).loss.backward()
        return x.grad[-1].item()

    assert grad_at(B) == pytest.approx(0.0, abs=1e-12)
    assert grad_at(B - 0.3) < 0 and grad_at(B - 3.0) < 0
    assert grad_at(B + 0.3) > 0 and grad_at(B + 3.0) > 0


def test_boundary_with_two_positives_by_hand():
    """P = {-1, -2}, N = {-3}, boundary 0: B = -2, T_p = 2B - s_p = {-3, -2};
    terms s_n - s_p = {-2, -1}, T_p - s_n = {0, 1}: L = log(1 + e^-2 + e^-1 + e^0 + e^1)."""
    s, _ = scores([-1.0, -2.0, -3.0])
    out = aft("boundary", boundary=0.0)(s, torch.tensor([0, 0, 0]), is_positive=torch.tensor([1, 1, 0]))
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-1) + 1 + math.e), abs=1e-12)


@pytest.mark.parametrize("constraint", ["none", "detached", "boundary"])
def test_two_rank_levels_equal_positive_negative_form(constraint):
    torch.manual_seed(0)
    values = torch.randn(12).tolist()
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    positive = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0]).bool()
    a, xa = scores(values)
    b, xb = scores(values)
    by_label = aft(constraint)(a, groups, is_positive=positive)
    by_rank = aft(constraint)(b, groups, ranks=torch.where(positive, 1, 2))
    assert by_rank.loss.item() == pytest.approx(by_label.loss.item(), abs=1e-12)
    by_label.loss.backward()
    by_rank.loss.backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    # Ranks need not start at 1 in every group: only their order matters.
    c, _ = scores(values)
    assert aft(constraint)(c, groups, ranks=torch.where(positive, 3, 5)).loss.item() == pytest.approx(
        by_label.loss.item(), abs=1e-12)


def test_three_rank_levels_by_hand():
    """Levels 1, 2, 3 with scores -1, -2, -3, constraint none: pairs (1,2), (1,3), (2,3):
    L = log(1 + e^{-2+1} + e^{-3+1} + e^{-3+2}). With boundary 0.5: B_1 = -1.5, B_2 = -2.5,
    T = 2B_a - s_p: -2 (level 1), -3 (level 2); extra terms e^{-2+2}, e^{-2+3}, e^{-3+3}."""
    s, _ = scores([-2.0, -1.0, -3.0])
    ranks = torch.tensor([2, 1, 3])
    none = aft("none")(s, torch.tensor([0, 0, 0]), ranks=ranks)
    assert none.loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-1) + math.exp(-2)), abs=1e-12)
    bnd = aft("boundary")(s, torch.tensor([0, 0, 0]), ranks=ranks)
    expected = 1 + 2 * math.exp(-1) + math.exp(-2) + 1 + math.e + 1
    assert bnd.loss.item() == pytest.approx(math.log(expected), abs=1e-12)
    assert bnd.metrics["aft/boundary"].item() == pytest.approx((-1.5 - 2.5) / 2)
    assert bnd.metrics["scores/positive"].item() == -1.0 and bnd.metrics["scores/negative"].item() == -2.5


def test_groups_without_both_sides_are_skipped_and_never_nan():
    """Group 0: positives only; group 1: negatives only; group 2: one of each. L = L_2."""
    s, x = scores([-1.0, -2.0, -3.0, -4.0, -0.5, -1.5])
    out = aft("boundary")(s, torch.tensor([0, 0, 1, 1, 2, 2]), is_positive=torch.tensor([1, 1, 0, 0, 1, 0]).bool())
    assert out.metrics["aft/skipped_groups"].item() == 2 and out.metrics["aft/groups"].item() == 3
    # group 2: s_p = -0.5, B = -1, T = 2B - s_p = -1.5, s_n = -1.5: log(1 + e^{-1} + e^{0})
    assert out.loss.item() == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-12)
    assert out.per_example.tolist() == pytest.approx([0.0, 0.0, math.log(2 + math.exp(-1))])
    out.loss.backward()
    assert x.grad[:4].abs().max() == 0 and torch.isfinite(x.grad).all()
    assert out.metrics["scores/positive"].item() == pytest.approx((-1 - 2 - 0.5) / 3)

    none, y = scores([-1.0, -2.0, -3.0])
    empty = aft("boundary")(none, torch.tensor([0, 0, 1]), is_positive=torch.tensor([1, 1, 0]).bool())
    assert empty.loss.item() == 0.0 and empty.metrics["aft/skipped_groups"].item() == 2
    empty.loss.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().max() == 0
    assert "aft/boundary" not in empty.metrics


def test_loss_is_mean_over_groups_and_uses_normalized_scores():
    """normalize=mean: s = logp_sum / n_tokens. Group a: s = (-4/2, -9/3) = (-2, -3): softplus(-1);
    group b: (-1/1, -1/1): softplus(0). L = (softplus(-1) + ln 2) / 2."""
    s = SeqScores(torch.tensor([-4.0, -9.0, -1.0, -1.0]), torch.tensor([2, 3, 1, 1]))
    out = build_loss("aft", constraint="none", normalize="mean")(
        s, torch.tensor([5, 5, 9, 9]), is_positive=torch.tensor([1, 0, 1, 0]).bool())
    assert out.loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2, abs=1e-6)


def test_input_errors():
    s, _ = scores([-1.0, -2.0])
    g = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="exactly one"):
        aft("none")(s, g)
    with pytest.raises(ValueError, match="exactly one"):
        aft("none")(s, g, is_positive=torch.tensor([1, 0]), ranks=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="group_ids must be"):
        aft("none")(s, torch.tensor([0, 0, 0]), is_positive=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="ranks must be integers >= 1"):
        aft("none")(s, g, ranks=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="constraint='hard'"):
        build_loss("aft", constraint="hard")
