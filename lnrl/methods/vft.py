"""VFT: vanilla fine-tuning on gold chain-of-thought solutions (AFT paper, step 1).

Loss: token-level NLL over solution tokens only (the prompt is masked out).
"""

from __future__ import annotations

from lnrl.methods.base import LnrlModule


class VFTModule(LnrlModule):
    data_kind = "sft"
    loss_kinds = ("token",)

    def training_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = self.loss_fn(logits=logits, input_ids=batch["input_ids"], completion_mask=batch["completion_mask"])
        self.log_metrics("train", {"loss": out.loss, **out.metrics}, batch_size=batch["input_ids"].shape[0])
        return out.loss
