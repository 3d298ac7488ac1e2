"""IPO by hand: l = (h - 1/(2 beta))^2 with h the length-averaged log-ratio margin."""

from __future__ import annotations

import pytest
import torch

from lnrl.losses import build_loss
from lnrl.scoring import SeqScores


def seq(logps, n, grad=False):
    return SeqScores(torch.tensor(logps, requires_grad=grad), torch.tensor(n))


def test_ipo_mean_by_hand():
    """pc = -6/3 = -2, rc = -9/3 = -3, pr = -8/4 = -2, rr = -4/4 = -1: h = 1 - (-1) = 2.
    beta = 0.5: l = (2 - 1)^2 = 1 and dl/d(pc sum) = 2 (h - 1) / 3 = 2/3, dl/d(pr sum) = -2 (h - 1) / 4."""
    pc, pr = seq([-6.0], [3], grad=True), seq([-8.0], [4], grad=True)
    out = build_loss("ipo", beta=0.5)(policy_chosen=pc, policy_rejected=pr,
                                      ref_chosen=seq([-9.0], [3]), ref_rejected=seq([-4.0], [4]))
    assert out.loss.item() == pytest.approx(1.0, abs=1e-6)
    out.loss.backward()
    assert pc.logp_sum.grad.item() == pytest.approx(2 / 3, abs=1e-6)
    assert pr.logp_sum.grad.item() == pytest.approx(-0.5, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.5 * 2, abs=1e-6)


def test_ipo_sum_and_target_margin():
    """normalize=sum: h = (-6 + 9) - (-8 + 4) = 7, beta = 0.5: (7 - 1)^2 = 36.
    beta = 0.25 moves the target margin to 1/(2 beta) = 2, which the mean-normalised h = 2 meets: loss 0."""
    kw = dict(policy_chosen=seq([-6.0], [3]), policy_rejected=seq([-8.0], [4]),
              ref_chosen=seq([-9.0], [3]), ref_rejected=seq([-4.0], [4]))
    assert build_loss("ipo", beta=0.5, normalize="sum")(**kw).loss.item() == pytest.approx(36.0)
    assert build_loss("ipo", beta=0.25)(**kw).loss.item() == pytest.approx(0.0, abs=1e-10)


def test_ipo_needs_reference():
    with pytest.raises(ValueError, match="'ipo' needs reference"):
        build_loss("ipo")(policy_chosen=seq([-1.0], [1]), policy_rejected=seq([-1.0], [1]))
