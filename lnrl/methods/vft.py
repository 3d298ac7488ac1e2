"""VFT: vanilla fine-tuning on gold chain-of-thought solutions (AFT paper, step 1).

Loss: token-level NLL over solution tokens only (the prompt is masked out).
"""

from __future__ import annotations

from lnrl.methods.base import LnrlModule


class VFTModule(LnrlModule):
    data_kind = "sft"
    loss_kinds = ("token",)

    def _step(self, batch, prefix: str):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = self.loss_fn(logits=logits, input_ids=batch["input_ids"], completion_mask=batch["completion_mask"])
        self.log_metrics(prefix, {"loss": out.loss, **out.metrics}, batch_size=batch["input_ids"].shape[0])
        return out.loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")
