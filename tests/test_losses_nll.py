"""Token-level NLL: -sum of completion-token log-probs / number of completion tokens in the batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lnrl.losses import build_loss
from lnrl.scoring import SeqScores, sequence_logps


def test_nll_by_hand_is_token_weighted():
    """Row 0 scores 2 tokens with log p = log 0.25 and log 0.2, row 1 one token with log 0.5:
    L = -(log 0.25 + log 0.2 + log 0.5) / 3 (not the mean of the two per-row means)."""
    probs = torch.tensor([[[0.50, 0.25, 0.25], [0.10, 0.20, 0.70], [1 / 3, 1 / 3, 1 / 3]],
                          [[0.50, 0.25, 0.25], [0.10, 0.20, 0.70], [1 / 3, 1 / 3, 1 / 3]]])
    ids = torch.tensor([[0, 2, 1], [1, 0, 2]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    out = build_loss("nll")(logits=probs.log(), input_ids=ids, completion_mask=mask)
    assert out.loss.item() == pytest.approx(-(math.log(0.25) + math.log(0.2) + math.log(0.5)) / 3, abs=1e-6)
    torch.testing.assert_close(out.per_example, torch.tensor([-math.log(0.05) / 2, -math.log(0.5)]))
    assert out.metrics["nll/tokens"].item() == 3


def test_nll_matches_cross_entropy_and_scores_path():
    """Independent implementation: F.cross_entropy on shifted labels with -100 on non-completion tokens."""
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 17)
    ids = torch.randint(0, 17, (3, 8))
    mask = (torch.rand(3, 8) > 0.4).long()
    labels = ids.masked_fill(mask == 0, -100)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 17), labels[:, 1:].reshape(-1), ignore_index=-100)
    nll = build_loss("nll")
    assert nll(logits=logits, input_ids=ids, completion_mask=mask).loss.item() == pytest.approx(ce.item(), abs=1e-5)
    scores = sequence_logps(logits, ids, mask)
    assert nll(scores=scores).loss.item() == pytest.approx(ce.item(), abs=1e-5)


def test_nll_input_errors_and_empty_mask():
    nll = build_loss("nll")
    with pytest.raises(ValueError, match="either"):
        nll()
    empty = nll(scores=SeqScores(torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.long)))
    assert empty.loss.item() == 0.0 and torch.isfinite(empty.loss)


def test_sequence_reduction_is_a_mean_of_per_sequence_means():
    """logp_sum = [-6, -3] over [3, 1] tokens: token reduction 9 / 4 = 2.25; sequence reduction
    (6/3 + 3/1) / 2 = 2.5 (RPO's length-normalised NLL: every sequence counts once). Gradient of the
    sequence form: dL/d logp_sum_b = -1 / (B n_b) = [-1/6, -1/2]."""
    logp = torch.tensor([-6.0, -3.0], requires_grad=True)
    scores = SeqScores(logp, torch.tensor([3, 1]))
    assert build_loss("nll")(scores=scores).loss.item() == pytest.approx(2.25)
    out = build_loss("nll", reduction="sequence")(scores=scores)
    assert out.loss.item() == pytest.approx(2.5)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1 / 6, -1 / 2]))
    one = SeqScores(torch.tensor([-6.0]), torch.tensor([3]))  # one sequence: the two reductions agree
    assert build_loss("nll", reduction="sequence")(scores=one).loss.item() == build_loss("nll")(scores=one).loss.item()
    with pytest.raises(ValueError, match="reduction='mean'"):
        build_loss("nll", reduction="mean")
