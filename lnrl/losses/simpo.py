"""SimPO: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
https://arxiv.org/abs/2405.14734 (Eq. 6). No reference model.

    s(y) = (1/|y|) log pi(y|x)                  (normalize="mean", the paper's length-normalised reward)
    l_i  = -log sigmoid(beta (s(y_c) - s(y_r)) - gamma)
    L    = (1/B) sum_i w_i l_i                  (weight_norm as in dpo.py)

Rewards are logged as beta * s(y), as TRL's CPOTrainer does for loss_type="simpo".
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lnrl.losses.dpo import check_pairs, check_weight_norm, pair_metrics, weighted_mean
from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, check_normalize, normalize


@register_loss("simpo")
class SimPO:
    kind = "pairwise"
    needs_reference = False
    uses_weights = True

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, normalize: str = "mean", weight_norm: str = "none"):
        self.beta = float(check_param("simpo", "beta", beta, float(beta) > 0, "a number > 0"))
        self.gamma = float(gamma)
        self.normalize = check_normalize(normalize, "loss 'simpo': normalize")
        self.weight_norm = check_weight_norm("simpo", weight_norm)

    def __call__(self, policy_chosen: SeqScores, policy_rejected: SeqScores, ref_chosen: SeqScores | None = None,
                 ref_rejected: SeqScores | None = None, weights: Tensor | None = None) -> LossOutput:
        # ref_* are accepted so every pairwise loss shares one call signature, and ignored.
        check_pairs("simpo", False, policy_chosen, policy_rejected, None, None)
        s_c, s_r = normalize(policy_chosen, self.normalize), normalize(policy_rejected, self.normalize)
        per_example = -F.logsigmoid(self.beta * (s_c - s_r) - self.gamma)
        metrics = pair_metrics(self.beta * s_c, self.beta * s_r, policy_chosen, policy_rejected)
        return LossOutput(weighted_mean(per_example, weights, "simpo", self.weight_norm), per_example, metrics)
