"""Pairwise preference methods: DPO (sum or length-averaged), IPO, SimPO, and weighted DPO.

One module serves every pairwise loss of the registry; the loss decides the objective
(`method=dpo` / `dpo_avg` / `ipo` / `simpo` are config presets). A batch holds B pairs as 2B rows,
chosen rows first (pair i = rows i and B+i), scored by one forward pass.

Reference scores (for losses with `needs_reference`):
- `reference: cached` (default): per-response reference SeqScores stored in the group file by
  `lnrl-refscores`, so no second model sits in memory during a sweep;
- `reference: live`: a frozen copy of the starting model, loaded the same way as the policy,
  scored under no_grad. It is kept out of the module's registered children on purpose: it is
  not checkpointed, not handed to the optimizer and not sharded by the strategy.

Papers: DPO arXiv 2305.18290; length-averaged DPO arXiv 2406.19188; weighted DPO on
verifier-mined hard negatives arXiv 2512.19728.
"""

from __future__ import annotations

from typing import Any

import torch

from lnrl.distributed import shard_for_trainer
from lnrl.losses import LossOutput, get_spec
from lnrl.methods.base import LnrlModule
from lnrl.models import load_model
from lnrl.scoring import SeqScores, sequence_logps

REFERENCES = ("cached", "live")


class DPOModule(LnrlModule):
    data_kind = "pairs"
    loss_kinds = ("pairwise",)

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict, tokenizer=None,
                 reference: str = "cached", **extra: Any):
        super().__init__(model, loss, optim, scheduler, tokenizer=tokenizer, reference=reference, **extra)
        if reference not in REFERENCES:
            raise ValueError(f"method.reference={reference!r}; expected one of {REFERENCES}")
        self.reference = reference
        self.needs_reference = get_spec(self.loss_fn).needs_reference
        self._ref_model: tuple[torch.nn.Module, ...] = ()  # a tuple hides it from nn.Module registration

    # -- reference --------------------------------------------------------------------------
    def configure_model(self) -> None:
        super().configure_model()
        if self.reference == "live" and self.needs_reference and not self._ref_model:
            ref = load_model(self.model_cfg, self.tokenizer)
            ref.eval()
            ref.requires_grad_(False)
            # Sharded like the policy under trainer=fsdp2; kept in a tuple so it stays out of
            # state_dict, checkpoints and the optimizer.
            self._ref_model = (shard_for_trainer(ref, self, frozen=True),)

    @property
    def ref_model(self) -> torch.nn.Module | None:
        return self._ref_model[0] if self._ref_model else None

    @torch.no_grad()
    def live_reference(self, batch: dict[str, torch.Tensor]) -> SeqScores:
        ref = self.ref_model
        if next(ref.parameters()).device != batch["input_ids"].device:
            ref.to(batch["input_ids"].device)  # not a registered child, so Lightning does not move it
        logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logps(logits, batch["input_ids"], batch["completion_mask"])

    def cached_reference(self, batch: dict[str, torch.Tensor], policy: SeqScores) -> SeqScores:
        if "ref_logp_sum" not in batch:
            raise ValueError(
                f"{self.prefs_path()}: some pairs have no cached reference scores ('ref' on completions, "
                f"'gold_ref' for gold-as-chosen pairs); run lnrl-refscores first "
                f"(lnrl-refscores input={self.prefs_path()} model=<the starting model>), "
                f"or train with method.reference=live")
        return SeqScores(batch["ref_logp_sum"].to(policy.logp_sum.dtype), batch["ref_n_tokens"])

    def prefs_path(self) -> str:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return str(getattr(dm, "prefs_path", None) or "the preference file")

    # -- loss -------------------------------------------------------------------------------
    def pair_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None  # plain DPO: every pair counts once

    def pair_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """One forward over the 2B rows, reference scores, then the registry loss."""
        policy = self.score(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        policy_chosen, policy_rejected = policy.chunk(2)
        ref_chosen = ref_rejected = None
        if self.needs_reference:
            ref = self.live_reference(batch) if self.reference == "live" else self.cached_reference(batch, policy)
            ref_chosen, ref_rejected = ref.chunk(2)
        return self.loss_fn(policy_chosen=policy_chosen, policy_rejected=policy_rejected,
                            ref_chosen=ref_chosen, ref_rejected=ref_rejected, weights=self.pair_weights(batch))

    def training_step(self, batch, batch_idx):
        out = self.pair_loss(batch)
        self.log_metrics("train", {"loss": out.loss, **out.metrics}, batch_size=batch["input_ids"].shape[0] // 2)
        return out.loss



class WeightedDPOModule(DPOModule):
    """DPO with a per-pair weight from the verifier profile of the rejected completion.

    The data layer reads `data.weight_field` (default `profile.wrongness`) and scales the weights
    to mean 1 over the dataset, so the loss keeps the scale of unweighted DPO; the loss computes
    sum_i w_i l_i / sum_i w_i per batch.
    """

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict, tokenizer=None, **extra: Any):
        super().__init__(model, loss, optim, scheduler, tokenizer=tokenizer, **extra)
        if not get_spec(self.loss_fn).uses_weights:
            raise ValueError(f"WeightedDPOModule cannot train with loss '{loss.get('name')}': it ignores "
                             f"per-pair weights; use method=dpo for it, or a loss that takes weights")

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and not getattr(dm, "weight_field", None):
            raise ValueError("WeightedDPOModule needs per-pair weights: set data.weight_field "
                             "(e.g. profile.wrongness), or use method=dpo for unweighted pairs")

    def pair_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["weights"]
