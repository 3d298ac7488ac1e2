"""Configuration errors found before training, naming the key (issue 10).

Before: `loss.beta=abc` failed in `float('abc')` inside the loss, `optim.lr=abc` in torch's comparison,
`data.batch_size=0` in the DataLoader, none naming the key; `trainer.max_steps=0` exited 0 with an
untrained model a sweep counted as a success; a sweep whose 30 points all lacked `data.prefs_path`
launched 18 identical failures. And the config tests composed every option without building the objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR, TINY, compose_cfg
from lnrl.apps.train import build, preflight, train
from lnrl.checkpoint_io import AtomicCheckpointIO
from lnrl.losses import LOSSES
from lnrl.models import load_tokenizer
from lnrl.sweep import SweepConfigError, preflight_sweep, root_cause
from test_configs import OPTIONS

FIXTURES = ["experiment=fixtures"]


def numbers(node, prefix: str) -> list[str]:
    """Dotted keys of the numeric leaves of a config node (bools are not numbers)."""
    out = []
    for k, v in node.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(f"{prefix}.{k}")
    return out


def cases() -> list[tuple[list[str], str]]:
    """(overrides, numeric key) for every numeric key of every loss (through the method presets that
    use it), optimizer and schedule option, and the datamodule."""
    out = []
    for method in sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")):
        name = compose_cfg([*TINY, *FIXTURES, f"method={method}"], Path(".")).loss.name  # the preset's loss
        loss = OmegaConf.load(CONF_DIR / "loss" / f"{name}.yaml")
        out += [([*FIXTURES, f"method={method}"], key) for key in numbers(loss, "loss")]
    for group in ("optim", "scheduler"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
            out += [([f"{group}={option}"], key) for key in numbers(node, group)]
    base = OmegaConf.load(CONF_DIR / "data" / "base.yaml")
    out += [([], key) for key in numbers(base, "data")]
    return out


CASES = cases()


def test_every_numeric_key_is_covered():
    keys = {key for _, key in CASES}
    assert {"loss.beta", "loss.boundary", "loss.gamma", "loss.label_smoothing", "optim.lr", "optim.eps",
            "optim.momentum", "scheduler.warmup_ratio", "data.batch_size", "data.max_length"} <= keys, keys


@pytest.mark.parametrize("overrides,key", CASES, ids=[f"{' '.join(o)}:{k}" for o, k in CASES])
def test_a_non_number_is_refused_naming_its_key(overrides, key, tmp_path):
    cfg = compose_cfg([*TINY, *overrides, f"{key}=abc"], tmp_path)
    with pytest.raises(Exception) as e:  # a ValueError, or Hydra's InstantiationException around one
        preflight(cfg)
    assert isinstance(root_cause(e.value), ValueError)
    msg = str(e.value)  # the loss registry says "loss 'dpo': beta='abc' is invalid, ... (loss.beta in your config"
    assert (f"{key}='abc'" in msg or f"({key} in your config" in msg) and "expected" in msg, msg


@pytest.mark.parametrize("override,message", [
    ("loss.beta=abc", "loss 'dpo': beta='abc' is invalid, expected a finite number (loss.beta in your config"),
    ("optim.lr=abc", "optim.lr='abc': expected a finite number"),
    ("optim.lr=-1", "Invalid learning rate: -1 (the optim.* keys of your config)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]: expected 2 finite numbers"),
    ("data.batch_size=0", "data.batch_size=0: expected an integer >= 1"),
    ("data.batch_size=2.5", "data.batch_size=2.5: expected an integer >= 1"),
    ("data.eval_batch_size=-1", "data.eval_batch_size=-1: expected an integer >= 1"),
    ("data.pairing=best", "data.pairing='best': expected one of all, one_per_question, hard_negative"),
    ("data.weight_clip=0.5", "data.weight_clip=0.5: expected null or a finite number >= 1"),
    ("data.weight_clip=3", "data.weight_clip=3 caps per-pair weights, but data.weight_field is not set"),
])
def test_the_issue_examples_name_key_and_what_it_accepts(override, message, tmp_path):
    with pytest.raises(Exception) as e:
        preflight(compose_cfg([*TINY, *FIXTURES, "method=dpo", override], tmp_path))
    assert isinstance(root_cause(e.value), ValueError) and message in str(e.value), str(e.value)


@pytest.mark.parametrize("override", ["trainer.max_steps=0", "trainer.max_epochs=0", "+trainer.limit_train_batches=0",
                                      "+trainer.limit_train_batches=0.0"])
def test_a_run_that_would_take_no_step_is_refused_before_fit(override, tmp_path):
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ValueError, match=rf"{key}=0(\.0)?: the run would take no optimizer step"):
        train(compose_cfg([*TINY, override], tmp_path))
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "hf_model").exists()


# ----------------------------------------------------------------------------- every shipped option builds


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


NEEDS = {("model", "hf"): ["model.path=/nonexistent"], ("data", "jsonl"): ["data.path=/nonexistent.jsonl"]}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_builds_trainer_optimizer_schedule_and_method(group, option, tok, tmp_path):
    """Not only composed: the Trainer (on CPU; GPU-only strategies are built without it), the optimizer on
    real parameters, the schedule on it, the method module and the datamodule."""
    # A loss option is trained by a method of its kind (the default method, VFT, takes token losses only).
    method = {"pairwise": ["method=dpo"], "group": ["method=aft"]}.get(LOSSES[option].kind, []) \
        if group == "loss" else []
    cfg = compose_cfg([*TINY, "data.prefs_path=${paths.fixtures_dir}/groups_tiny.jsonl", "data.max_length=256",
                       *method, f"{group}={option}", *NEEDS.get((group, option), [])], tmp_path)
    _, datamodule, module = build(cfg, tok)
    assert datamodule.kind == module.data_kind
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = module.optim_factory(params)
    assert isinstance(optimizer, torch.optim.Optimizer) and optimizer.defaults["lr"] == cfg.optim.lr
    scheduler = module.scheduler_factory(optimizer, total_steps=10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    plugins = [p._target_ for p in cfg.trainer.get("plugins") or []]
    assert plugins == ["lnrl.checkpoint_io.AtomicCheckpointIO"], plugins  # every trainer config carries it
    if cfg.trainer.accelerator == "gpu" or "fsdp1" in str(cfg.trainer.get("strategy", {}).get("_target_", "")):
        assert isinstance(instantiate(cfg.trainer.plugins[0]), AtomicCheckpointIO)
        return
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ----------------------------------------------------------------------------- sweeps fail fast


def sweep_config(tmp_path: Path, overrides: list[str], swept: tuple[str, ...] = ()):
    """The config a multirun hands its callbacks: `swept` are command-line sweeps (key=v1,v2)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = [*cfg.hydra.overrides.task, *swept]
    return cfg


def test_a_sweep_whose_every_point_fails_alike_stops_before_launching(tmp_path):
    cfg = sweep_config(tmp_path, ["sweep=dpo_beta_norm", "model=tiny", "logger=none"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(SweepConfigError, match=r"(?s)all 30 points of this sweep fail before training with the "
                                                   r"same error.*data.kind=pairs needs data.prefs_path"):
            preflight_sweep(cfg, preflight)
    assert (tmp_path / "sweep" / "failed.json").is_file()


def test_a_sweep_with_one_healthy_point_is_launched(tmp_path):
    """loss.normalize=bogus fails only its own points: the sweep runs and records them one by one."""
    cfg = sweep_config(tmp_path, ["sweep=dpo_beta_norm", "model=tiny", "logger=none", "experiment=fixtures"],
                       swept=("loss.normalize=bogus,sum",))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        preflight_sweep(cfg, preflight)
    assert not (tmp_path / "sweep" / "failed.json").exists()


@pytest.mark.slow
def test_lnrl_train_multirun_without_prefs_exits_with_the_one_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "lnrl.apps.train", "-m", "sweep=dpo_beta_norm", "model=tiny",
                          "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "sweep not launched: all 30 points" in out and "needs data.prefs_path" in out, out[-3000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["failed.json"]  # no point ran
