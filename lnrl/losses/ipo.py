"""IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", https://arxiv.org/abs/2310.12036 (Eq. 17, beta playing the paper's tau).

    h   = [s(y_c) - s_ref(y_c)] - [s(y_r) - s_ref(y_r)]
    l_i = (h - 1 / (2 beta))^2,      L = (1/B) sum_i w_i l_i (weight_norm as in dpo.py)

With normalize="mean" (the default) s is the per-token average log-likelihood, as TRL 1.16's
loss_type="ipo" computes it (the IPO authors' normalisation, see TRL's DPOTrainer); a squared loss
on summed log-probs would scale with completion length.
"""

from __future__ import annotations

from torch import Tensor

from lnrl.losses.dpo import check_pairs, check_weight_norm, pair_metrics, weighted_mean
from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, check_normalize, normalize


@register_loss("ipo")
class IPO:
    kind = "pairwise"
    needs_reference = True
    uses_weights = True

    def __init__(self, beta: float = 0.1, normalize: str = "mean", weight_norm: str = "none"):
        self.beta = float(check_param("ipo", "beta", beta, float(beta) > 0, "a number > 0"))
        self.normalize = check_normalize(normalize, "loss 'ipo': normalize")
        self.weight_norm = check_weight_norm("ipo", weight_norm)

    def __call__(self, policy_chosen: SeqScores, policy_rejected: SeqScores, ref_chosen: SeqScores | None = None,
                 ref_rejected: SeqScores | None = None, weights: Tensor | None = None) -> LossOutput:
        check_pairs("ipo", True, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        chosen_logratio = normalize(policy_chosen, self.normalize) - normalize(ref_chosen, self.normalize).detach()
        rejected_logratio = (normalize(policy_rejected, self.normalize)
                             - normalize(ref_rejected, self.normalize).detach())
        per_example = (chosen_logratio - rejected_logratio - 1 / (2 * self.beta)) ** 2
        metrics = pair_metrics(self.beta * chosen_logratio, self.beta * rejected_logratio,
                               policy_chosen, policy_rejected)
        return LossOutput(weighted_mean(per_example, weights, "ipo", self.weight_norm), per_example, metrics)
