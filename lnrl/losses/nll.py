"""Negative log-likelihood: VFT, the AFT paper's step 1 (Wang et al. 2023, https://arxiv.org/abs/2309.02144),
the NLL term AFT adds on gold chains of thought, and RPO's NLL term on the chosen side (Pang et al. 2024,
"Iterative Reasoning Preference Optimization", https://arxiv.org/abs/2404.19733).

    reduction="token"     L = - sum_b logp_sum[b] / sum_b n_tokens[b]
    reduction="sequence"  L = - (1/B) sum_b logp_sum[b] / n_tokens[b]

"token" (the default, VFT and AFT) is a mean over every completion token in the batch: a long solution
counts more than a short one, as in Hugging Face's causal-LM loss. "sequence" first normalises each
sequence by its own length, then averages over sequences: RPO's length-normalised NLL, where every
chosen response counts once. The two agree when the batch holds one sequence or equal lengths.

Call with the model's logits, `nll(logits=, input_ids=, completion_mask=)`, or with scores already
computed, `nll(scores=SeqScores)`: the same number.
"""

from __future__ import annotations

from torch import Tensor

from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, sequence_logps

REDUCTIONS = ("token", "sequence")


@register_loss("nll")
class NLL:
    kind = "token"
    needs_reference = False
    uses_weights = False

    def __init__(self, reduction: str = "token"):
        self.reduction = check_param("nll", "reduction", reduction, reduction in REDUCTIONS, " | ".join(REDUCTIONS))

    def __call__(self, logits: Tensor | None = None, input_ids: Tensor | None = None,
                 completion_mask: Tensor | None = None, *, scores: SeqScores | None = None) -> LossOutput:
        if (scores is None) == (logits is None):
            raise ValueError("loss 'nll': pass either logits=, input_ids=, completion_mask= or scores=")
        if scores is None:
            if input_ids is None or completion_mask is None:
                raise ValueError("loss 'nll': logits= needs input_ids= and completion_mask=")
            scores = sequence_logps(logits, input_ids, completion_mask)
        n_tokens = scores.n_tokens.to(scores.logp_sum.dtype)
        per_example = -scores.logp_sum / n_tokens.clamp(min=1)  # per-sequence mean NLL
        if self.reduction == "token":
            loss = -scores.logp_sum.sum() / n_tokens.sum().clamp(min=1)
        else:
            loss = per_example.mean()
        return LossOutput(loss, per_example, {"nll/tokens": n_tokens.sum().detach()})
