"""What every method shares: model construction, optimizer and schedule, scoring, logging.

A method subclass says which batches it eats (`data_kind`) and which losses it can feed
(`loss_kinds`), and writes `training_step`. The loop, precision, strategy and checkpointing
belong to Lightning.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from lnrl.distributed import reduce_metrics, shard_for_trainer
from lnrl.losses import build_loss
from lnrl.models import load_model, load_tokenizer
from lnrl.scoring import SeqScores, sequence_logps


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """LR multiplier: linear warmup to 1, then cosine decay to min_lr_ratio (constant if min_lr_ratio == 1)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class LnrlModule(pl.LightningModule):
    data_kind: ClassVar[str] = "sft"           # which batches the datamodule must serve
    loss_kinds: ClassVar[tuple[str, ...]] = ()  # registry kinds this method can feed

    def __init__(self, model: dict, loss: dict, optim: dict, scheduler: dict, tokenizer=None, **extra: Any):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.model_cfg, self.optim_cfg, self.scheduler_cfg = dict(model), dict(optim), dict(scheduler)
        self.loss_fn = build_loss(**dict(loss))
        kind = getattr(self.loss_fn, "kind", None)
        if kind not in self.loss_kinds:
            raise ValueError(
                f"{type(self).__name__} cannot train with loss '{loss.get('name')}' (a {kind} loss); "
                f"it feeds {', '.join(self.loss_kinds)} losses. Pick a matching method=... or loss=...")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_cfg)
        self.model: torch.nn.Module | None = None
        # Held-out gold CoTs are scored by token NLL whatever the method, so val/loss compares across methods.
        self.nll_fn = build_loss("nll")

    # -- model -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        # Built here rather than in __init__ so sharded strategies can wrap it before it is materialised.
        if self.model is None:
            # Under trainer=fsdp2 this shards per decoder block; otherwise it returns the model as is.
            self.model = shard_for_trainer(load_model(self.model_cfg, self.tokenizer), self)
            self.model.train()  # from_pretrained returns eval mode; dropout is off either way

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              completion_mask: torch.Tensor) -> SeqScores:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return sequence_logps(logits, input_ids, completion_mask)

    def validation_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = self.nll_fn(logits=logits, input_ids=batch["input_ids"], completion_mask=batch["completion_mask"])
        self.log_metrics("val", {"loss": out.loss}, batch_size=batch["input_ids"].shape[0])

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        # trainer.model: the (possibly sharded) module whose parameters the strategy manages.
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0),
                                      betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=cfg.get("eps", 1e-8))
        sched = self.scheduler_cfg
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(sched.get("warmup_steps") or round(sched.get("warmup_ratio", 0.0) * total))
        lam = warmup_cosine(total, warmup, float(sched.get("min_lr_ratio", 0.1)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- logging ----------------------------------------------------------------------------
    def log_metrics(self, prefix: str, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log scalars averaged over the epoch/accumulation window and reduced across ranks."""
        # Reduced here, not by sync_dist: a metric some ranks lack this batch would hang sync_dist.
        for key, value in reduce_metrics(metrics).items():
            name = key if "/" in key else f"{prefix}/{key}"
            self.log(name, value.to(self.device), on_step=prefix == "train", on_epoch=prefix != "train",
                     batch_size=batch_size, prog_bar=name in ("train/loss", "val/loss"))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Logged here (not with LearningRateMonitor) so it works with logger=none too.
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop before a NaN reaches the weights; OnExceptionCheckpoint then saves the intact state.
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}, batch of "
                f"epoch {self.current_epoch}; weights were not updated. Lower optim.lr or check the data; "
                f"resume with ckpt_path=<run dir>/checkpoints/on_exception.ckpt")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lnrl_model_cfg"] = self.model_cfg
