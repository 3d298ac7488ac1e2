"""DPO (sigmoid), length-averaged DPO, conservative DPO, weights (and their reduction), boundary constraint.

Notation: s = normalize(log pi), h = [s_c - s_ref,c] - [s_r - s_ref,r], l = -log sigmoid(beta h).
"""

from __future__ import annotations

import math

import pytest
import torch

from lnrl.losses import build_loss
from lnrl.scoring import SeqScores


def seq(logps, n=None, grad=False):
    logps = torch.tensor(logps, dtype=torch.float32, requires_grad=grad)
    n = torch.ones(len(logps), dtype=torch.long) if n is None else torch.tensor(n)
    return SeqScores(logps, n)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 7.5])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_policy_equal_to_reference_gives_ln2(beta, normalize):
    """policy == reference => h = 0 => l = -log sigmoid(0) = ln 2 for any beta."""
    torch.manual_seed(0)
    c, r = seq(torch.randn(5).mul(20).tolist(), [3, 5, 7, 9, 11]), seq(torch.randn(5).mul(20).tolist(), [2] * 5)
    out = build_loss("dpo", beta=beta, normalize=normalize)(policy_chosen=c, policy_rejected=r,
                                                             ref_chosen=c, ref_rejected=r)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    torch.testing.assert_close(out.per_example, torch.full((5,), math.log(2)))
    assert out.metrics["rewards/margins"].item() == 0.0


def test_value_and_metrics_by_hand():
    """pc=-10, pr=-12, rc=rr=-11: h = 1 - (-1) = 2, beta = 0.5: l = -log sigmoid(1) = log(1 + e^-1).
    Rewards (TRL's beta * (policy - reference)): chosen 0.5, rejected -0.5, margin 1, accuracy 1."""
    out = build_loss("dpo", beta=0.5)(policy_chosen=seq([-10.0]), policy_rejected=seq([-12.0]),
                                      ref_chosen=seq([-11.0]), ref_rejected=seq([-11.0]))
    assert out.loss.item() == pytest.approx(softplus(-1.0), abs=1e-6)
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["rewards/chosen"] == pytest.approx(0.5) and m["rewards/rejected"] == pytest.approx(-0.5)
    assert m["rewards/margins"] == pytest.approx(1.0) and m["rewards/accuracies"] == 1.0
    assert m["logps/chosen"] == -10.0 and m["logps/rejected"] == -12.0


def test_mean_normalization_equals_sum_with_beta_over_length():
    """All completions of length L: s_mean = s_sum / L, so beta * h_mean = (beta / L) * h_sum."""
    torch.manual_seed(1)
    L = 4
    pc, pr, rc, rr = (seq(torch.randn(6).mul(10).tolist(), [L] * 6) for _ in range(4))
    kw = dict(policy_chosen=pc, policy_rejected=pr, ref_chosen=rc, ref_rejected=rr)
    mean = build_loss("dpo", beta=0.4, normalize="mean")(**kw)
    summed = build_loss("dpo", beta=0.4 / L, normalize="sum")(**kw)
    torch.testing.assert_close(mean.per_example, summed.per_example)
    # ...and with unequal lengths the two differ.
    pc2 = SeqScores(pc.logp_sum, torch.tensor([1, 2, 3, 4, 5, 6]))
    kw["policy_chosen"], kw["ref_chosen"] = pc2, SeqScores(rc.logp_sum, pc2.n_tokens)
    assert not torch.allclose(build_loss("dpo", beta=0.4, normalize="mean")(**kw).per_example,
                              build_loss("dpo", beta=0.1, normalize="sum")(**kw).per_example)


def test_weights_are_importance_weights():
    """Default weight_norm=none: L = (1/B) sum_i w_i l_i. With w = [3, 0, 1, 1]: L = (3 l0 + l2 + l3) / 4,
    all-ones weights give exactly plain DPO, a zero-weight pair gets no gradient."""
    torch.manual_seed(2)
    pc, pr = seq(torch.randn(4).tolist(), grad=True), seq(torch.randn(4).tolist(), grad=True)
    rc, rr = seq(torch.randn(4).tolist()), seq(torch.randn(4).tolist())
    dpo = build_loss("dpo", beta=1.0)
    kw = dict(policy_chosen=pc, policy_rejected=pr, ref_chosen=rc, ref_rejected=rr)
    plain = dpo(**kw)
    assert torch.equal(dpo(**kw, weights=torch.ones(4)).loss, plain.loss)

    w = torch.tensor([3.0, 0.0, 1.0, 1.0])
    out = dpo(**kw, weights=w)
    l = plain.per_example.detach()
    assert out.loss.item() == pytest.approx(((3 * l[0] + l[2] + l[3]) / 4).item(), rel=1e-6)
    out.loss.backward()
    assert pc.logp_sum.grad[1] == 0 and pr.logp_sum.grad[1] == 0
    assert (pc.logp_sum.grad[[0, 2, 3]] < 0).all() and (pr.logp_sum.grad[[0, 2, 3]] > 0).all()

    zero = dpo(**kw, weights=torch.zeros(4))
    assert zero.loss.item() == 0.0 and zero.loss.requires_grad
    with pytest.raises(ValueError, match="weights must be"):
        dpo(**kw, weights=torch.ones(3))


@pytest.mark.parametrize("name", ["dpo", "ipo", "simpo"])
def test_a_pair_of_weight_two_counts_twice(name):
    """One pair alone in its batch: weight 2 gives exactly twice the unweighted loss and gradient
    (weight_norm=none), and exactly the unweighted ones under weight_norm=batch, which renormalises
    per batch. By hand for dpo: pc=-10, pr=-12, rc=rr=-11, beta=0.5: h = 2, l = log(1 + e^-1),
    dl/d(pc) = -beta sigmoid(-beta h) = -0.5 sigmoid(-1)."""
    def run(weight, weight_norm="none"):
        pc, pr = seq([-10.0], grad=True), seq([-12.0], grad=True)
        loss = build_loss(name, beta=0.5, weight_norm=weight_norm)
        out = loss(policy_chosen=pc, policy_rejected=pr, ref_chosen=seq([-11.0]), ref_rejected=seq([-11.0]),
                   weights=None if weight is None else torch.tensor([weight]))
        out.loss.backward()
        return out.loss.item(), pc.logp_sum.grad.item(), pr.logp_sum.grad.item()

    unweighted, doubled, batch = run(None), run(2.0), run(2.0, "batch")
    assert doubled == pytest.approx(tuple(2 * x for x in unweighted), rel=1e-6)
    assert batch == pytest.approx(unweighted, rel=1e-6)
    assert run(1.0) == unweighted  # all ones: exactly the unweighted loss
    if name == "dpo":
        sig = 1 / (1 + math.exp(1.0))
        assert unweighted[0] == pytest.approx(softplus(-1.0), abs=1e-6)
        assert doubled[1] == pytest.approx(2 * -0.5 * sig, abs=1e-6)


def test_weight_norm_batch_is_self_normalised():
    """weight_norm=batch: L = sum_i w_i l_i / sum_i w_i. With w = [3, 0, 1, 1]: (3 l0 + l2 + l3) / 5;
    uniform weights give the plain mean; all zeros give 0, still in the graph."""
    torch.manual_seed(3)
    pc, pr = seq(torch.randn(4).tolist(), grad=True), seq(torch.randn(4).tolist())
    kw = dict(policy_chosen=pc, policy_rejected=pr, ref_chosen=seq(torch.randn(4).tolist()),
              ref_rejected=seq(torch.randn(4).tolist()))
    dpo = build_loss("dpo", beta=1.0, weight_norm="batch")
    l = dpo(**kw).per_example.detach()
    out = dpo(**kw, weights=torch.tensor([3.0, 0.0, 1.0, 1.0]))
    assert out.loss.item() == pytest.approx(((3 * l[0] + l[2] + l[3]) / 5).item(), rel=1e-6)
    assert dpo(**kw, weights=torch.full((4,), 3.0)).loss.item() == pytest.approx(l.mean().item(), rel=1e-6)
    zero = dpo(**kw, weights=torch.zeros(4))
    assert zero.loss.item() == 0.0 and zero.loss.requires_grad
    with pytest.raises(ValueError, match="weight_norm='sum'"):
        build_loss("dpo", weight_norm="sum")


def test_label_smoothing_by_hand():
    """beta h = 1, eps = 0.1: l = -0.9 log sigmoid(1) - 0.1 log sigmoid(-1) = 0.9 sp(-1) + 0.1 sp(1)."""
    out = build_loss("dpo", beta=0.5, label_smoothing=0.1)(
        policy_chosen=seq([-10.0]), policy_rejected=seq([-12.0]), ref_chosen=seq([-11.0]), ref_rejected=seq([-11.0]))
    assert out.loss.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0), abs=1e-6)


def test_boundary_constraint_value_and_gradient():
    """s_c = -1, s_r = -3, boundary 0.5: B = -1.5, T = 2B - s_c = -2, term = log(1 + e^{T - s_r}) = sp(1).
    d term / d s_r = -sigmoid(T - s_r) = -sigmoid(1) < 0 (descent raises s_r); d term / d s_c = 0
    (B and T carry no gradient). At s_r = T the term's gradient is -1/2."""
    def run(constraint, s_r):
        pc, pr = seq([-1.0], grad=True), seq([s_r], grad=True)
        out = build_loss("dpo", beta=0.1, constraint=constraint, boundary=0.5)(
            policy_chosen=pc, policy_rejected=pr, ref_chosen=seq([-2.0]), ref_rejected=seq([-2.5]))
        out.loss.backward()
        return out, pc.logp_sum.grad.item(), pr.logp_sum.grad.item()

    plain, gc0, gr0 = run("none", -3.0)
    bounded, gc1, gr1 = run("boundary", -3.0)
    assert bounded.loss.item() - plain.loss.item() == pytest.approx(softplus(1.0), abs=1e-6)
    assert gc1 == pytest.approx(gc0, abs=1e-7)
    assert gr1 - gr0 == pytest.approx(-1 / (1 + math.exp(-1.0)), abs=1e-6)
    assert bounded.metrics["dpo/below_boundary"].item() == 1.0  # -3 < B = -1.5

    _, _, gr_none = run("none", -2.0)
    _, _, gr_bound = run("boundary", -2.0)
    assert gr_bound - gr_none == pytest.approx(-0.5, abs=1e-6)


def test_requires_reference_and_validates_params():
    with pytest.raises(ValueError, match="needs reference"):
        build_loss("dpo")(policy_chosen=seq([-1.0]), policy_rejected=seq([-2.0]))
    with pytest.raises(ValueError, match="same batch size"):
        build_loss("dpo")(policy_chosen=seq([-1.0]), policy_rejected=seq([-2.0, -1.0]),
                          ref_chosen=seq([-1.0]), ref_rejected=seq([-1.0]))
    with pytest.raises(ValueError, match="beta"):
        build_loss("dpo", beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss("dpo", label_smoothing=0.5)
    with pytest.raises(ValueError, match="constraint='detached'"):
        build_loss("dpo", constraint="detached")
