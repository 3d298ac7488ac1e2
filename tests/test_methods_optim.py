"""Optimizer and scheduler from `_target_` + `_partial_: true` configs (conf/optim, conf/scheduler)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from conftest import TINY, compose_cfg
from lnrl.methods import SFTModule
from lnrl.methods.schedules import warmup_cosine
from lnrl.models import load_tokenizer
from lnrl.utils import to_dict


def test_warmup_cosine_by_hand():
    """total 10, warmup 2, min ratio 0.1: steps 0, 1 ramp 1/2, 2/2; then 0.1 + 0.9 * (1 + cos(pi p)) / 2 with
    p = (step - 2) / 8: step 2 -> 1, step 6 -> 0.55, step 10 -> 0.1. warmup_ratio 0.25 of 8 steps = 2 too."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    factor = warmup_cosine(opt, total_steps=10, warmup_steps=2).lr_lambdas[0]
    assert [factor(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1])
    assert warmup_cosine(opt, 8, warmup_ratio=0.25).lr_lambdas[0](1) == 1.0
    assert warmup_cosine(opt, 10, min_lr_ratio=1.0).lr_lambdas[0](7) == 1.0  # constant.yaml


def test_optim_sgd_really_trains_with_sgd(tmp_path):
    """optim=sgd scheduler=constant: Lightning gets torch.optim.SGD with the configured lr, and one step
    moves every weight by exactly -lr * grad (plain SGD: no momentum, no weight decay, no clipping)."""
    cfg = compose_cfg([*TINY, "optim=sgd", "optim.lr=0.05", "scheduler=constant", "eval.enabled=false"], tmp_path)
    tok = load_tokenizer(cfg.model)
    # As lnrl-train builds them (Hydra's recursive instantiate turns optim/scheduler into partials).
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim),
                         scheduler=to_dict(cfg.scheduler), tokenizer=tok, _convert_="all")
    dm = instantiate(cfg.data, tokenizer=tok, _convert_="all")
    dm.use_kind(module.data_kind, method="SFTModule")
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    opt = trainer.optimizers[0]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.0
    assert module.hparams.optim["_target_"].endswith("SGD") and module.hparams.optim["lr"] == 0.05
    moved = 0
    for n, p in module.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.detach(), before[n] - 0.05 * p.grad, rtol=0, atol=1e-7)
            moved += int(p.grad.abs().sum() > 0)
    assert moved > 0


def test_adamw_is_the_default_and_old_configs_get_a_clear_error(tmp_path):
    cfg = compose_cfg(TINY, tmp_path)
    assert cfg.optim._target_ == "torch.optim.AdamW" and cfg.optim._partial_
    tok = load_tokenizer(cfg.model)
    with pytest.raises(ValueError, match="`optim.name` is no longer read"):
        SFTModule(model=to_dict(cfg.model), loss={"name": "nll"}, optim={"name": "sgd", "lr": 1e-3}, tokenizer=tok)
    with pytest.raises(ValueError, match="set scheduler._partial_=true"):
        SFTModule(model=to_dict(cfg.model), loss={"name": "nll"}, optim=to_dict(cfg.optim), tokenizer=tok,
                  scheduler={"_target_": "lnrl.methods.schedules.warmup_cosine"})
    m = SFTModule(model=to_dict(cfg.model), loss={"name": "nll"}, optim=to_dict(cfg.optim),
                  scheduler=to_dict(cfg.scheduler), tokenizer=tok)
    opt = m.optim_factory([torch.zeros(2, requires_grad=True)])
    assert type(opt) is torch.optim.AdamW and opt.defaults["lr"] == cfg.optim.lr
    sched = m.scheduler_factory(opt, total_steps=10)  # cosine.yaml: warmup_ratio 0.1 -> 1 step
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr) and not math.isnan(sched.get_last_lr()[0])
