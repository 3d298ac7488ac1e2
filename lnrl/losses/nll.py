"""Token-level negative log-likelihood: VFT, the AFT paper's step 1 (Wang et al. 2023,
https://arxiv.org/abs/2309.02144), and the NLL term AFT adds on gold chains of thought.

    L = - sum_b sum_t m[b,t] log p(x[b,t] | x[b,<t]) / sum_b sum_t m[b,t]

a mean over every completion token in the batch (token-weighted: a long solution counts more than a
short one, as in Hugging Face's causal-LM loss), not a mean of per-sequence means.

Call with the model's logits, `nll(logits=, input_ids=, completion_mask=)`, or with scores already
computed, `nll(scores=SeqScores)`: sum_b logp_sum[b] / sum_b n_tokens[b] is the same number.
"""

from __future__ import annotations

from torch import Tensor

from lnrl.losses.registry import LossOutput, register_loss
from lnrl.scoring import SeqScores, sequence_logps


@register_loss("nll")
class NLL:
    kind = "token"
    needs_reference = False
    uses_weights = False

    def __call__(self, logits: Tensor | None = None, input_ids: Tensor | None = None,
                 completion_mask: Tensor | None = None, *, scores: SeqScores | None = None) -> LossOutput:
        if (scores is None) == (logits is None):
            raise ValueError("loss 'nll': pass either logits=, input_ids=, completion_mask= or scores=")
        if scores is None:
            if input_ids is None or completion_mask is None:
                raise ValueError("loss 'nll': logits= needs input_ids= and completion_mask=")
            scores = sequence_logps(logits, input_ids, completion_mask)
        n_tokens = scores.n_tokens.to(scores.logp_sum.dtype)
        loss = -scores.logp_sum.sum() / n_tokens.sum().clamp(min=1)
        per_example = -scores.logp_sum / n_tokens.clamp(min=1)  # per-sequence mean NLL, for logging
        return LossOutput(loss, per_example, {"nll/tokens": n_tokens.sum().detach()})
