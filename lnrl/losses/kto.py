"""KTO: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
https://arxiv.org/abs/2402.01306 (Eq. 8 and Sec. 4.1).

Unpaired: each sampled response of a question is desirable (a correct answer, `is_positive`) or
undesirable, and the loss is a mean over responses, not over pairs. With s = normalize(log pi(y|x))
(normalize="sum" by default: the paper's and TRL's summed log-probabilities) for the policy and the
reference:

    rho_i = s_i - s_ref_i                          log-ratio of response i
    r_i   = beta * rho_i                           its implied reward
    z     = beta * max(0, mean_j rho_j)            the reference point, held constant (no gradient)
    l_i   = lambda_D * (1 - sigmoid(r_i - z))      if i is desirable
    l_i   = lambda_U * (1 - sigmoid(z - r_i))      if i is undesirable
    L     = mean_i l_i                             over every response of the batch

z stands for beta * KL(pi || pi_ref), the reference point of the prospect-theoretic value; the
paper estimates it per micro-batch, without backpropagating through it and clamped at 0. Which
responses enter the mean is this project's choice: the paper and TRL's KTOTrainer score
*mismatched* (question, response) pairs (a response of another question), which takes extra forward
passes a loss cannot make. Here the mean runs over the batch's own responses (each with its own
question), so no method needs to know about KTO. As with the paper's estimate, z = 0 when the policy
equals the reference. Responses sampled from the starting model give a mean log-ratio near or below
0 early in training, so z is often 0 there and each reward is compared with 0.

lambda_D and lambda_U (`desirable_weight`, `undesirable_weight`) weigh the two kinds; the paper
recommends lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable responses.

If policy == reference then every r_i = z = 0 and l_i = lambda / 2 for its kind.

Group loss (`kind = "group"`), reference needed: a method feeds it every response of G questions
with `group_ids` and `is_positive`, and the reference scores of the same rows as `ref_scores`.
`per_example` holds l_i per response. Metrics use TRL's names: "rewards/chosen" and "rewards/rejected"
(mean r over desirable / undesirable responses), "rewards/margins" (their difference),
"logps/chosen" and "logps/rejected" (mean policy log-prob sums), "kto/kl" (max(0, mean rho), TRL's
"kl"), and "kto/desirable", "kto/undesirable" (counts).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, check_normalize, normalize


@register_loss("kto")
class KTO:
    kind = "group"
    needs_reference = True
    uses_weights = False

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 normalize: str = "sum"):
        self.beta = float(check_param("kto", "beta", beta, float(beta) > 0, "a number > 0"))
        self.desirable_weight = float(check_param("kto", "desirable_weight", desirable_weight,
                                                  float(desirable_weight) >= 0, "a number >= 0"))
        self.undesirable_weight = float(check_param("kto", "undesirable_weight", undesirable_weight,
                                                    float(undesirable_weight) >= 0, "a number >= 0"))
        self.normalize = check_normalize(normalize, "loss 'kto': normalize")

    def __call__(self, scores: SeqScores, group_ids: Tensor, is_positive: Tensor | None = None,
                 ranks: Tensor | None = None, ref_scores: SeqScores | None = None) -> LossOutput:
        n = len(scores)
        if is_positive is None or ranks is not None:
            raise ValueError("loss 'kto': needs is_positive= (desirable = correct answer), not ranks=; "
                             "train it with method.use_ranks=false")
        if ref_scores is None:
            raise ValueError("loss 'kto' needs reference scores: pass ref_scores=")
        for name, t in (("group_ids", group_ids), ("is_positive", is_positive), ("ref_scores", ref_scores.logp_sum)):
            if t.shape != (n,):
                raise ValueError(f"loss 'kto': {name} must be [N]={n} like scores, got {tuple(t.shape)}")
        s = normalize(scores, self.normalize)
        rho = s - normalize(ref_scores, self.normalize).detach()
        kl = rho.detach().mean().clamp(min=0)
        r, z = self.beta * rho, self.beta * kl
        good = is_positive.bool().to(s.device)
        per_example = torch.where(good, self.desirable_weight * torch.sigmoid(z - r),      # 1 - sigmoid(r - z)
                                  self.undesirable_weight * torch.sigmoid(r - z))           # 1 - sigmoid(z - r)
        metrics = {"kto/kl": kl, "kto/desirable": good.sum().float(), "kto/undesirable": (~good).sum().float()}
        rewards, logps = r.detach(), scores.logp_sum.detach()
        for side, mask in (("chosen", good), ("rejected", ~good)):
            if mask.any():
                metrics[f"rewards/{side}"] = rewards[mask].mean()
                metrics[f"logps/{side}"] = logps[mask].mean()
        if good.any() and (~good).any():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return LossOutput(per_example.mean(), per_example, metrics)
