"""GroupModule: training on groups of k sampled responses per question, for every group loss.

AFT (Wang et al. 2023, arXiv 2309.02144) and KTO over groups (arXiv 2402.01306) are config presets.
A batch holds G questions, each with its k responses split by answer correctness (`is_positive`) or
ranked (`ranks`, with method.use_ranks=true), and the question's gold CoT. One scoring call scores
every response, and the gold rows too when a token term needs them (the fast path runs each question's
prompt once for its k responses and its gold row; the plain path pads them all into one forward):

    loss = L_group(s; groups [, reference scores]) + sum_t weight_t * term_t

AFT's NLL on the gold CoT is such a term: `method.sft_weight` is shorthand for
`method.extra_losses: {nll: {weight: sft_weight}}` (0 = the group loss alone, no gold rows scored).
A group loss that needs a reference (KTO) gets the responses' reference scores, cached or live.
"""

from __future__ import annotations

from collections.abc import Mapping

from lnrl.methods.base import ROWS, LnrlModule, Objective, cat_rows  # noqa: F401  (cat_rows: its former home)


class GroupModule(LnrlModule):
    data_kind = "groups"
    loss_kind = "group"

    def __init__(self, model: dict, loss: dict, optim, scheduler=None, tokenizer=None, reference: str = "cached",
                 extra_losses: Mapping[str, Mapping] | None = None, use_ranks: bool = False,
                 sft_weight: float | None = None, fast_scoring: bool = True):
        extra = dict(extra_losses or {})
        if sft_weight is not None:
            if sft_weight < 0:
                raise ValueError(f"method.sft_weight={sft_weight}; must be >= 0")
            if "nll" in extra and sft_weight > 0:
                raise ValueError(f"method.sft_weight={sft_weight} and method.extra_losses.nll both set the NLL term "
                                 f"on the gold CoTs; keep one (method.sft_weight=0 leaves it to extra_losses)")
            extra.setdefault("nll", {"weight": float(sft_weight)})
        super().__init__(model, loss, optim, scheduler, tokenizer=tokenizer, reference=reference, extra_losses=extra,
                         fast_scoring=fast_scoring)
        self.use_ranks = bool(use_ranks)

    def objective(self, batch) -> Objective:
        n = batch["input_ids"].shape[0]
        scores = self.score(batch, prefixes=("", "gold_") if self.has_term("token") else ("",))

        if self.use_ranks:
            if (batch["ranks"] < 1).any():
                raise ValueError("method.use_ranks=true but some completions have no 'rank' in the group file; "
                                 "rank every completion (1 = best) or set method.use_ranks=false")
            split = {"ranks": batch["ranks"]}
        else:
            split = {"is_positive": batch["is_positive"]}
        inputs = {"group": {"scores": scores[:n], "group_ids": batch["group_ids"], **split},
                  "token": {"scores": scores[n:]}}
        refs = {}
        if "group" in self.ref_kinds:
            refs["group"] = {"ref_scores": self.reference_scores(batch)}
        if "token" in self.ref_kinds:
            refs["token"] = {"ref_scores": self.reference_scores({k: batch[f"gold_{k}"] for k in ROWS})}
        return self.combine(inputs, refs)

    def batch_size(self, batch) -> int:
        return batch["gold_input_ids"].shape[0]
