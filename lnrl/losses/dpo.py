"""DPO with the sigmoid loss, summed or length-averaged log-likelihoods, optional pair weights.

- DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290
- length-averaged DPO (normalize="mean"): Grinsztajn et al. 2024, https://arxiv.org/abs/2406.19188
- conservative DPO (label_smoothing): Mitchell 2023, https://ericmitchell.ai/cdpo.pdf
- boundary constraint: Wang et al. 2023 (AFT), https://arxiv.org/abs/2309.02144

With s(y) = normalize(log pi(y|x)) (sum, or mean over the completion tokens) for the policy pi and
the reference pi_ref,

    h   = [s(y_c) - s_ref(y_c)] - [s(y_r) - s_ref(y_r)]
    l_i = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    L   = (1/B) sum_i w_i l_i                  (weight_norm="none", the default: plain mean when w_i = 1)
    L   = sum_i w_i l_i / sum_i w_i            (weight_norm="batch": self-normalised within the batch)

The data layer scales the weights to mean 1 over the whole data set, so with weight_norm="none" a
pair of weight 2 counts twice as much as a pair of weight 1 whatever it is batched with. "batch"
renormalises within each micro-batch, which cancels that scaling: with one pair per batch the
weight has no effect, with two only their ratio matters.

Mean-normalised DPO with every completion of length L equals summed DPO with beta / L.

constraint="boundary" (this project's form of AFT's boundary constraint for a ranking loss): add
    log(1 + exp(T - s(y_r))),  B = s(y_c) - boundary,  T = 2B - s(y_c) = s(y_c) - 2 boundary,
with B and T held constant (no gradient). The term's gradient on s(y_r) is -sigmoid(T - s(y_r)) < 0,
so gradient descent raises a rejected score that falls far below the chosen one instead of letting
DPO push it down without limit (the degeneration the AFT paper reports for unconstrained ranking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, check_normalize, normalize


WEIGHT_NORMS = ("none", "batch")


def weighted_mean(per_example: Tensor, weights: Tensor | None, loss: str, weight_norm: str = "none") -> Tensor:
    """(1/B) sum_i w_i l_i ("none"), or sum_i w_i l_i / sum_i w_i ("batch"); the plain mean when weights
    is None. "batch" gives 0, still in the graph, when every w_i = 0."""
    if weights is None:
        return per_example.mean()
    if weights.shape != per_example.shape:
        raise ValueError(f"loss {loss!r}: weights must be [B]={tuple(per_example.shape)}, got {tuple(weights.shape)}")
    w = weights.to(per_example.dtype)
    if weight_norm == "none":
        return (w * per_example).mean()
    return (w * per_example).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)


def check_weight_norm(loss: str, weight_norm: str) -> str:
    return check_param(loss, "weight_norm", weight_norm, weight_norm in WEIGHT_NORMS, " | ".join(WEIGHT_NORMS))


def check_pairs(loss: str, needs_reference: bool, policy_chosen: SeqScores, policy_rejected: SeqScores,
                ref_chosen: SeqScores | None, ref_rejected: SeqScores | None) -> None:
    if needs_reference and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss {loss!r} needs reference scores: pass ref_chosen= and ref_rejected=")
    present = [s for s in (policy_chosen, policy_rejected, ref_chosen, ref_rejected) if s is not None]
    if len({len(s) for s in present}) != 1:
        raise ValueError(f"loss {loss!r}: chosen/rejected/reference scores must have the same batch size, got "
                         f"{[len(s) for s in present]}")


def pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor, policy_chosen: SeqScores,
                 policy_rejected: SeqScores) -> dict[str, Tensor]:
    """TRL's names and reductions (unweighted batch means); logps/* are policy log-prob sums."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.logp_sum.detach().mean(),
        "logps/rejected": policy_rejected.logp_sum.detach().mean(),
    }


@register_loss("dpo")
class DPO:
    kind = "pairwise"
    needs_reference = True
    uses_weights = True

    def __init__(self, beta: float = 0.1, normalize: str = "sum", label_smoothing: float = 0.0,
                 constraint: str = "none", boundary: float = 0.5, weight_norm: str = "none"):
        self.beta = float(check_param("dpo", "beta", beta, float(beta) > 0, "a number > 0"))
        self.normalize = check_normalize(normalize, "loss 'dpo': normalize")
        self.label_smoothing = float(check_param("dpo", "label_smoothing", label_smoothing,
                                                 0.0 <= float(label_smoothing) < 0.5, "0 <= eps < 0.5"))
        self.constraint = check_param("dpo", "constraint", constraint, constraint in ("none", "boundary"),
                                      "none or boundary")
        self.boundary = float(boundary)
        self.weight_norm = check_weight_norm("dpo", weight_norm)

    def __call__(self, policy_chosen: SeqScores, policy_rejected: SeqScores, ref_chosen: SeqScores | None = None,
                 ref_rejected: SeqScores | None = None, weights: Tensor | None = None) -> LossOutput:
        check_pairs("dpo", True, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        s_c, s_r = normalize(policy_chosen, self.normalize), normalize(policy_rejected, self.normalize)
        chosen_logratio = s_c - normalize(ref_chosen, self.normalize).detach()
        rejected_logratio = s_r - normalize(ref_rejected, self.normalize).detach()
        logits = self.beta * (chosen_logratio - rejected_logratio)
        eps = self.label_smoothing
        per_example = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        # Rewards as TRL logs them for loss_type="sigmoid": beta * (policy - reference), here normalised alike.
        metrics = pair_metrics(self.beta * chosen_logratio, self.beta * rejected_logratio,
                               policy_chosen, policy_rejected)
        if self.constraint == "boundary":
            term, below = boundary_term(s_c, s_r, self.boundary)
            per_example = per_example + term
            metrics["dpo/boundary_term"] = term.detach().mean()
            metrics["dpo/below_boundary"] = below.float().mean()
        return LossOutput(weighted_mean(per_example, weights, "dpo", self.weight_norm), per_example, metrics)


def boundary_term(s_chosen: Tensor, s_rejected: Tensor, boundary: float) -> tuple[Tensor, Tensor]:
    """log(1 + exp(T - s_r)) with B = s_c - boundary and T = 2B - s_c held constant; also s_r < B."""
    b = s_chosen.detach() - boundary
    t = 2 * b - s_chosen.detach()
    return F.softplus(t - s_rejected), s_rejected.detach() < b
