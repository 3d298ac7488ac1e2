"""AFT: alignment fine-tuning with the constrained alignment loss (Wang et al. 2023, arXiv 2309.02144).

A batch holds G questions, each with k sampled CoTs split by answer correctness (or ranked), and
the question's gold CoT. One forward pass scores every member and every gold row:

    loss = sft_weight * NLL(gold CoT tokens) + L_align(s; groups)

where s are the members' (normalized) sequence log-likelihoods and L_align is a `group` loss of the
registry (`aft`: constraint none | detached | boundary). Reference-free: no reference model or
cached reference scores are needed.
"""

from __future__ import annotations

from typing import Any

import torch

from lnrl.losses import LossOutput
from lnrl.methods.base import LnrlModule
from lnrl.scoring import sequence_logps


def cat_rows(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two right-padded row sets ([N,T], [M,T']) into [N+M, max(T,T')], padding on the right."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return {k: torch.cat([pad(a[k], pad_id if k == "input_ids" else 0), pad(b[k], pad_id if k == "input_ids" else 0)])
            for k in ("input_ids", "attention_mask", "completion_mask")}


class AFTModule(LnrlModule):
    data_kind = "groups"
    loss_kinds = ("group",)

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict, tokenizer=None,
                 sft_weight: float = 1.0, use_ranks: bool = False, **extra: Any):
        super().__init__(model, loss, optim, scheduler, tokenizer=tokenizer, sft_weight=sft_weight,
                         use_ranks=use_ranks, **extra)
        if sft_weight < 0:
            raise ValueError(f"method.sft_weight={sft_weight}; must be >= 0")
        self.sft_weight, self.use_ranks = float(sft_weight), bool(use_ranks)

    def group_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossOutput, dict[str, torch.Tensor]]:
        """(total loss, alignment LossOutput, extra metrics) for one batch of groups."""
        members = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        n = members["input_ids"].shape[0]
        use_gold = self.sft_weight > 0
        rows = cat_rows(members, {k: batch[f"gold_{k}"] for k in members}, self.tokenizer.pad_token_id) \
            if use_gold else members
        logits = self.model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        scores = sequence_logps(logits, rows["input_ids"], rows["completion_mask"])

        if self.use_ranks:
            if (batch["ranks"] < 1).any():
                raise ValueError("method.use_ranks=true but some completions have no 'rank' in the group file; "
                                 "rank every completion (1 = best) or set method.use_ranks=false")
            split = {"ranks": batch["ranks"]}
        else:
            split = {"is_positive": batch["is_positive"]}
        align = self.loss_fn(scores=scores[:n], group_ids=batch["group_ids"], **split)
        extra: dict[str, torch.Tensor] = {"align_loss": align.loss}
        loss = align.loss
        if use_gold:
            # Token-level NLL of the gold CoTs: sum logp / sum tokens over the gold rows.
            sft = self.nll_fn(scores=scores[n:])
            extra["sft_nll"] = sft.loss
            loss = loss + self.sft_weight * sft.loss
        return loss, align, extra

    def training_step(self, batch, batch_idx):
        loss, align, extra = self.group_loss(batch)
        self.log_metrics("train", {"loss": loss, **extra, **align.metrics},
                         batch_size=batch["gold_input_ids"].shape[0])
        return loss

