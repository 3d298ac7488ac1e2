"""Lightning callbacks owned by lnrl."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lnrl.checkpoint_io import PoisonedStateError, resume_hint, tensors_finite
from lnrl.dashboard import log_generation_table
from lnrl.data.records import read_groups
from lnrl.evaluation import EvalResult, SampleSpec, check_protocol, evaluate_model, near_miss_ids

log = logging.getLogger(__name__)


class GenerationEval(pl.Callback):
    """Evaluate on held-out questions before (optional) and after fit.

    Held-out questions come from `trainer.datamodule.eval_examples` (and, for eval.protocol=harness_gsm8k,
    the shots from its `train_examples`). Results are logged to every logger (`val/answer_acc`,
    `val/gen_len`, `val/nll`, ...) at step 0 (before) and the final step (after), and kept whole in
    `self.evals = {"before": EvalResult, "after": EvalResult}`: lnrl-train writes the metrics to
    metrics.json and the per-question records into the run dir (`EvalResult.write_records`).
    """

    def __init__(self, enabled: bool = True, before: bool = False, n_examples: int | None = None,
                 max_new_tokens: int = 256, batch_size: int = 16, candidates_path: str | None = None,
                 include_gold: bool = False, nll_examples: int | None = None, near_miss_from: str | None = None,
                 protocol: str = "chat", samples: dict | None = None):
        self.enabled, self.before = enabled, before
        self.n_examples, self.max_new_tokens, self.batch_size = n_examples, max_new_tokens, batch_size
        # Held-out candidate CoTs (a group file) for val/assessment_acc; read once, on first use.
        self.candidates_path, self.include_gold = candidates_path, include_gold
        self.nll_examples, self.near_miss_from = nll_examples, near_miss_from
        # Checked now, so a typo fails before training rather than after it.
        self.protocol, self.samples = check_protocol(protocol), SampleSpec.from_config(samples)
        self._candidates = None
        self.evals: dict[str, EvalResult] = {}

    @property
    def results(self) -> dict[str, dict]:
        """{tag: metrics} of the evaluations run so far."""
        return {tag: result.metrics for tag, result in self.evals.items()}

    def run(self, trainer: pl.Trainer, pl_module, tag: str) -> dict:
        dm = trainer.datamodule
        examples = dm.eval_examples[: self.n_examples or None]
        if self.candidates_path and self._candidates is None:
            self._candidates = read_groups(self.candidates_path)
        result = evaluate_model(
            pl_module.model, pl_module.tokenizer, examples, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, max_length=dm.max_length, system_prompt=dm.system_prompt,
            candidates=self._candidates, include_gold=self.include_gold, nll_examples=self.nll_examples,
            near_miss_ids=near_miss_ids(self.near_miss_from) if self.near_miss_from else None,
            protocol=self.protocol, shots_from=dm.train_examples,
            samples=self.samples, progress=trainer.is_global_zero)
        self.evals[tag] = result
        metrics = result.metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if result.generations is not None:
            log_generation_table(trainer.loggers, result.generations, tag, trainer.global_step)  # wandb only
        log.info("eval (%s): %s", tag, {k: round(v, 4) for k, v in metrics.items()})
        return metrics

    def on_fit_start(self, trainer, pl_module) -> None:
        # A resumed run already did its "before" evaluation.
        if self.enabled and self.before and trainer.global_step == 0:
            self.run(trainer, pl_module, "before")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.enabled:
            self.run(trainer, pl_module, "after")


class PerfMonitor(pl.Callback):
    """Throughput and memory of every optimizer step, logged like any metric (csv, wandb, metrics.json):

    perf/tokens_per_s  non-padding tokens of the step's batches, summed over ranks and over the micro-batches
                       of an accumulation window, per second of the step (slowest rank)
    perf/step_time_s   from the window's first training_step to its end (forward, backward, optimizer step,
                       a live reference); data loading between batches is not counted. Slowest rank.
    perf/peak_mem_gb   the largest peak over ranks since the run started: CUDA max_memory_allocated on GPU, the
                       process's peak resident set size on CPU (Python and libraries included: an upper bound)

    One all_gather of three numbers per step gives every rank the same values. On CUDA the step is
    bracketed by synchronizations, so the time covers the kernels, not just their launch (`sync_cuda`).
    Added to every run by LnrlModule.configure_callbacks unless the trainer already has one (this entry of
    conf/callbacks/default.yaml), so callbacks=none runs log it too.
    """

    def __init__(self, sync_cuda: bool = True):
        self.sync_cuda = sync_cuda
        self._start: float | None = None
        self._tokens = 0
        self._step = -1

    def _sync(self, device: torch.device) -> None:
        if self.sync_cuda and device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:  # the first micro-batch of an accumulation window
            self._sync(pl_module.device)
            self._start, self._tokens, self._step = time.perf_counter(), 0, trainer.global_step
        self._tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None or trainer.global_step == self._step:
            return  # inside an accumulation window: the optimizer has not stepped yet
        self._sync(pl_module.device)
        local = torch.tensor([float(self._tokens), time.perf_counter() - self._start, peak_memory_gb(pl_module.device)],
                             dtype=torch.float64, device=pl_module.device)
        self._start = None
        every = trainer.strategy.all_gather(local).reshape(-1, 3) if trainer.world_size > 1 else local[None]
        tokens, seconds, peak = every[:, 0].sum().item(), every[:, 1].max().item(), every[:, 2].max().item()
        for key, value in (("perf/tokens_per_s", tokens / max(seconds, 1e-9)), ("perf/step_time_s", seconds),
                           ("perf/peak_mem_gb", peak)):
            # Already the same on every rank: no sync_dist (a collective per key).
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch of any kind: SFT rows, pairs, groups and their gold rows."""
    return int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask")))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes on macOS, KiB on Linux


class SaveOnException(pl.Callback):
    """Write `<dirpath>/on_exception.ckpt` when fit crashes mid-training (a bad batch, Ctrl-C) so no work is lost.

    It writes only a state worth resuming from: not when no optimizer step was taken in this fit (a data
    or config error at setup: the starting weights, or the checkpoint resumed from, are already on disk),
    and never non-finite weights or optimizer state (the NaN guard stopped after an update that
    overflowed): then it names the newest checkpoint with finite weights instead. Either way the outcome
    is added to the exception as a note.

    Unlike Lightning's OnExceptionCheckpoint, its presence does not turn `fit(ckpt_path=None)` into an
    implicit resume from `last`: a run resumes only when `ckpt_path=...` says so.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception"):
        self.path = f"{dirpath}/{filename}.ckpt"
        self._start_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._start_step = trainer.global_step  # after a resume: the step resumed from

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if self._start_step is None or trainer.global_step == self._start_step:
            log.info("%s: no training step was taken in this fit; %s not written", type(exception).__name__, self.path)
            return
        if isinstance(exception, PoisonedStateError) or not _state_finite(trainer, pl_module):
            note = (f"lnrl: {self.path} not written: the weights or optimizer state at step {trainer.global_step} "
                    f"are not finite (or overflowed). {resume_hint(trainer, exclude=(Path(self.path).name,))}")
        else:
            trainer.save_checkpoint(self.path)
            note = (f"lnrl: the state at step {trainer.global_step} (finite weights) was saved to {self.path}; "
                    f"resume with ckpt_path={self.path} after fixing the cause")
        log.error("%s: %s\n%s", type(exception).__name__, exception, note)
        exception.add_note(note)


def _state_finite(trainer: pl.Trainer, pl_module) -> bool:
    """Whether this rank's weights and optimizer state are finite, and every rank's (one all-reduce)."""
    state = {"weights": list(pl_module.parameters()),
             "optimizers": [o.state_dict()["state"] for o in trainer.optimizers]}
    bad = torch.tensor(0.0 if tensors_finite(state) else 1.0, device=pl_module.device)
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce(bad, reduce_op="sum")
    return not bad.item()
