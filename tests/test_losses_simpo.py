"""SimPO by hand: l = -log sigmoid(beta (s_c - s_r) - gamma), s = mean log-prob, no reference."""

from __future__ import annotations

import math

import pytest
import torch

from lnrl.losses import LOSSES, build_loss
from lnrl.scoring import SeqScores


def seq(logps, n, grad=False):
    return SeqScores(torch.tensor(logps, requires_grad=grad), torch.tensor(n))


def test_simpo_by_hand():
    """s_c = -6/3 = -2, s_r = -12/4 = -3, beta = 2, gamma = 1: 2 * 1 - 1 = 1, l = log(1 + e^-1).
    dl/d(s_c) = -beta sigmoid(-1), so dl/d(pc sum) = -2 sigmoid(-1) / 3. Rewards: beta s = -4, -6."""
    pc, pr = seq([-6.0], [3], grad=True), seq([-12.0], [4], grad=True)
    out = build_loss("simpo", beta=2.0, gamma=1.0)(policy_chosen=pc, policy_rejected=pr)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    out.loss.backward()
    sig = 1 / (1 + math.exp(1.0))
    assert pc.logp_sum.grad.item() == pytest.approx(-2 * sig / 3, abs=1e-6)
    assert pr.logp_sum.grad.item() == pytest.approx(2 * sig / 4, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-4.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-6.0)


def test_simpo_ignores_reference():
    kw = dict(policy_chosen=seq([-6.0, -1.0], [3, 1]), policy_rejected=seq([-12.0, -2.0], [4, 1]))
    simpo = build_loss("simpo", beta=2.5, gamma=0.5)
    with_ref = simpo(**kw, ref_chosen=seq([-100.0, 3.0], [3, 1]), ref_rejected=seq([5.0, 5.0], [4, 1]))
    assert simpo(**kw).loss.item() == with_ref.loss.item()
    assert LOSSES["simpo"].needs_reference is False
