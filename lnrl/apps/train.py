"""lnrl-train: instantiate from config, fit, evaluate, write results.

    lnrl-train                                   # VFT on the embedded default
    lnrl-train model=tiny debug=fast             # a quick check
    lnrl-train method=dpo_avg loss.beta=0.5 data.prefs_path=groups.jsonl
    lnrl-train ckpt_path=<run>/checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lnrl.apps import CONF
from lnrl.callbacks import GenerationEval
from lnrl.checkpoint_io import check_checkpoint
from lnrl.dashboard import name_wandb_run
from lnrl.models import export_module, load_tokenizer
from lnrl.sweep import run_point
from lnrl.utils import build_all, build_datamodule, check_required, to_dict, write_json

log = logging.getLogger(__name__)

# ckpt_path values Lightning resolves itself (to a checkpoint its callbacks know), not file names.
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def check_takes_steps(cfg: DictConfig) -> None:
    """Refuse a run that would fit without one optimizer step: it would exit 0 and write an untrained
    model and its metrics, which a sweep counts as a success. (An empty training set is refused by the
    datamodule; a run that still took no step is refused after fit.)"""
    if not cfg.get("train", True):
        return  # train=false: no fit asked for
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        value = cfg.trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise ValueError(f"trainer.{key}={value}: the run would take no optimizer step and save an untrained "
                             f"model as if trained; expected trainer.max_steps >= 1 (or -1: until max_epochs), "
                             f"trainer.max_epochs >= 1 (or -1) and trainer.limit_train_batches > 0. To evaluate "
                             f"a model without training use lnrl-eval")


def build(cfg: DictConfig, tokenizer=None):
    """(tokenizer, datamodule, module) of a config; the model itself is loaded later, in fit."""
    tokenizer = load_tokenizer(cfg.model) if tokenizer is None else tokenizer
    datamodule = build_datamodule(cfg, tokenizer)
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim),
                         scheduler=to_dict(cfg.scheduler), tokenizer=tokenizer, _convert_="all")
    datamodule.use_kind(module.data_kind, method=type(module).__name__)  # the kind's home: the module class
    return tokenizer, datamodule, module


def preflight(cfg: DictConfig) -> None:
    """The configuration errors a run would hit before training, found without loading a model or reading
    the data: lnrl.sweep checks a sweep's points with it before launching any."""
    check_required(cfg)
    check_takes_steps(cfg)
    _, datamodule, _ = build(cfg, _tokenizer(json.dumps(to_dict(cfg.model), sort_keys=True)))
    datamodule.check_files()


@functools.lru_cache(maxsize=2)
def _tokenizer(model_cfg: str):
    return load_tokenizer(json.loads(model_cfg))  # one load for all the points of a sweep


def train(cfg: DictConfig) -> dict:
    """Run one training job from a composed config; return its metrics (also written to metrics.json)."""
    start = time.time()
    check_takes_steps(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if cfg.train and ckpt_path and str(ckpt_path) not in CKPT_KEYWORDS:
        check_checkpoint(ckpt_path)  # damaged: name it and the newest intact one, before loading anything
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    tokenizer, datamodule, module = build(cfg)

    evaluator = GenerationEval(**cfg.eval)
    loggers = build_all(name_wandb_run(cfg.get("logger"), cfg))  # wandb group/name/tags from the sweep point
    callbacks = build_all(cfg.get("callbacks"))
    # No checkpoint callback configured (callbacks=none) means no checkpoints: otherwise Lightning adds
    # its own ModelCheckpoint (1.6 GB per run for SmolLM2 with AdamW states).
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks + [evaluator], logger=loggers or False,
                                      enable_checkpointing=checkpointing)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.global_step == 0:
            raise RuntimeError(f"fit took no optimizer step (trainer: max_steps={trainer.max_steps}, max_epochs="
                               f"{trainer.max_epochs}, {trainer.num_training_batches} training batches per epoch): "
                               f"the model is untrained; no metrics written")
    datamodule.setup("fit")
    write_json(run_dir / "data_split.json", {"split": datamodule.split_info, "stats": datamodule.stats})

    if cfg.get("export_hf") and module.model is not None:
        # Every rank calls it: under FSDP the shards are gathered to rank 0, which writes.
        export_module(trainer, module, tokenizer, run_dir / "hf_model")

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(evaluator.results.get("after", {}))
    metrics.update({f"{k}_before": v for k, v in evaluator.results.get("before", {}).items()})
    # How much of the preference data the run built (pairs, groups, and how many took the gold CoT:
    # data.gold_as_chosen), so every run's metrics say which setting it trained with.
    counts = {f"data/{k}": float(v) for k, v in datamodule.stats.items()
              if k in DATA_COUNTS and isinstance(v, (int, float))}
    metrics.update(counts)
    if counts and trainer.is_global_zero:
        for logger in loggers:  # the dashboards get them too (wandb summary, csv)
            logger.log_metrics(counts, step=trainer.global_step)
            logger.save()
    metrics.update({"global_step": trainer.global_step, "seconds": round(time.time() - start, 1),
                    "method": cfg.method._target_.rsplit(".", 1)[-1], "model": cfg.model.name})
    if trainer.is_global_zero:
        if "after" in evaluator.evals:  # the per-question files lnrl-eval writes, for lnrl-report's intervals
            evaluator.evals["after"].write_records(run_dir)
        write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run done (lnrl.sweep)
    log.info("run dir: %s", run_dir)
    return metrics


DATA_COUNTS = ("train_rows", "pairs", "pairs_gold_chosen", "questions_with_pairs", "groups_all_incorrect",
               "groups_gold_positive")


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def main(cfg: DictConfig) -> float | None:
    # A failing run writes failed.json; in a multirun (-m) the sweep then goes on with the next point.
    metrics = run_point(train, cfg)
    if metrics is None:
        return None
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
