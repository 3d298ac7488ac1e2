"""GroupModule: training on groups of k sampled responses per question, for every group loss.

AFT (Wang et al. 2023, arXiv 2309.02144) and KTO over groups (arXiv 2402.01306) are config presets.
A batch holds G questions, each with its k responses split by answer correctness (`is_positive`) or
ranked (`ranks`, with method.use_ranks=true), and the question's gold CoT. One forward pass scores
every response, and the gold rows too when a token term needs them:

    loss = L_group(s; groups [, reference scores]) + sum_t weight_t * term_t

AFT's NLL on the gold CoT is such a term: `method.sft_weight` is shorthand for
`method.extra_losses: {nll: {weight: sft_weight}}` (0 = the group loss alone, no gold rows scored).
A group loss that needs a reference (KTO) gets the responses' reference scores, cached or live.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lnrl.methods.base import ROWS, LnrlModule, Objective


def cat_rows(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two right-padded row sets ([N,T], [M,T']) into [N+M, max(T,T')], padding on the right."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return {k: torch.cat([pad(a[k], pad_id if k == "input_ids" else 0), pad(b[k], pad_id if k == "input_ids" else 0)])
            for k in ROWS}


class GroupModule(LnrlModule):
    data_kind = "groups"
    loss_kind = "group"

    def __init__(self, model: dict, loss: dict, optim, scheduler=None, tokenizer=None, reference: str = "cached",
                 extra_losses: Mapping[str, Mapping] | None = None, use_ranks: bool = False,
                 sft_weight: float | None = None):
        extra = dict(extra_losses or {})
        if sft_weight is not None:
            if sft_weight < 0:
                raise ValueError(f"method.sft_weight={sft_weight}; must be >= 0")
            if "nll" in extra and sft_weight > 0:
                raise ValueError(f"method.sft_weight={sft_weight} and method.extra_losses.nll both set the NLL term "
                                 f"on the gold CoTs; keep one (method.sft_weight=0 leaves it to extra_losses)")
            extra.setdefault("nll", {"weight": float(sft_weight)})
        super().__init__(model, loss, optim, scheduler, tokenizer=tokenizer, reference=reference, extra_losses=extra)
        self.use_ranks = bool(use_ranks)

    def objective(self, batch) -> Objective:
        members = {k: batch[k] for k in ROWS}
        gold = {k: batch[f"gold_{k}"] for k in ROWS}
        n = members["input_ids"].shape[0]
        with_gold = self.has_term("token")
        scores = self.score(cat_rows(members, gold, self.tokenizer.pad_token_id) if with_gold else members)

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
            refs["token"] = {"ref_scores": self.reference_scores(gold)}
        return self.combine(inputs, refs)

    def batch_size(self, batch) -> int:
        return batch["gold_input_ids"].shape[0]
