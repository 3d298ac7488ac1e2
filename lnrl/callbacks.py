"""Lightning callbacks owned by lnrl."""

from __future__ import annotations

import logging

import lightning.pytorch as pl

from lnrl.dashboard import log_generation_table
from lnrl.data.records import read_groups
from lnrl.evaluation import evaluate_model

log = logging.getLogger(__name__)


class GenerationEval(pl.Callback):
    """Evaluate on held-out questions before (optional) and after fit.

    Held-out questions come from `trainer.datamodule.eval_examples`. Results are logged to every
    logger (`val/answer_acc`, `val/gen_len`, `val/nll`, ...) at step 0 (before) and the final step
    (after), and kept in `self.results = {"before": {...}, "after": {...}}` for metrics.json.
    """

    def __init__(self, enabled: bool = True, before: bool = False, n_examples: int | None = None,
                 max_new_tokens: int = 256, batch_size: int = 16, candidates_path: str | None = None,
                 include_gold: bool = True):
        self.enabled, self.before = enabled, before
        self.n_examples, self.max_new_tokens, self.batch_size = n_examples, max_new_tokens, batch_size
        # Held-out candidate CoTs (a group file) for val/assessment_acc; read once, on first use.
        self.candidates_path, self.include_gold = candidates_path, include_gold
        self._candidates = None
        self.results: dict[str, dict] = {}
        self.records: dict[str, list[dict]] = {}

    def run(self, trainer: pl.Trainer, pl_module, tag: str) -> dict:
        dm = trainer.datamodule
        examples = dm.eval_examples[: self.n_examples or None]
        if self.candidates_path and self._candidates is None:
            self._candidates = read_groups(self.candidates_path)
        metrics, records = evaluate_model(
            pl_module.model, pl_module.tokenizer, examples, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, max_length=dm.max_length, system_prompt=dm.system_prompt,
            candidates=self._candidates, include_gold=self.include_gold, progress=trainer.is_global_zero)
        self.results[tag], self.records[tag] = metrics, records
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log_generation_table(trainer.loggers, records, tag, trainer.global_step)  # wandb only
        log.info("eval (%s): %s", tag, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def on_fit_start(self, trainer, pl_module) -> None:
        # A resumed run already did its "before" evaluation.
        if self.enabled and self.before and trainer.global_step == 0:
            self.run(trainer, pl_module, "before")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.enabled:
            self.run(trainer, pl_module, "after")


class SaveOnException(pl.Callback):
    """Write `<dirpath>/on_exception.ckpt` when fit crashes (a NaN loss, Ctrl-C) so no work is lost.

    Unlike Lightning's OnExceptionCheckpoint, its presence does not turn `fit(ckpt_path=None)` into an
    implicit resume from `last`: a run resumes only when `ckpt_path=...` says so.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception"):
        self.path = f"{dirpath}/{filename}.ckpt"

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        trainer.save_checkpoint(self.path)
        log.error("%s: %s; state saved to %s", type(exception).__name__, exception, self.path)
