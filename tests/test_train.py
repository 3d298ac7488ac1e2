"""lnrl-train end to end with the tiny model: in-process, as a subprocess, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED_GSM8K, TINY, compose_cfg
from lnrl.apps.train import train

LNRL_TRAIN = [sys.executable, "-m", "lnrl.apps.train"]


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_vft_in_process_writes_checkpoint_metrics_and_model(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg())
    assert metrics["global_step"] == 3
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val/answer_acc"] == metrics["val/answer_acc"]
    assert 0.0 <= saved["val/answer_acc"] <= 1.0 and saved["val/gen_len"] > 0
    assert (tmp_path / "hf_model" / "config.json").is_file()
    split = json.loads((tmp_path / "data_split.json").read_text())["split"]
    assert split  # the held-out templates are recorded


def test_vft_reduces_nll_on_what_it_trains(tiny_cfg):
    """Sanity of the whole loop: 15 steps of lr 3e-3 on the tiny model lower the training loss."""
    cfg = tiny_cfg(["trainer.max_steps=15", "trainer.max_epochs=-1", "optim.lr=3e-3", "eval.enabled=false", "callbacks=none",
                    "data.source.n_train=4", "data.batch_size=4"])
    first = tiny_cfg(["trainer.max_steps=1", "optim.lr=3e-3", "eval.enabled=false", "callbacks=none",
                      "data.source.n_train=4", "data.batch_size=4"])
    assert train(cfg)["train/loss"] < train(first)["train/loss"] - 0.5


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in state["state_dict"].items()}


def test_resume_continues_step_count_and_data_order(tmp_path):
    """6 steps straight == 3 steps, stop, resume to 6 (same weights): step count and batch order carry over.

    8 training rows at batch 2 make a 4-batch epoch, so the stop at step 3 is mid-epoch: a loader
    that restarted the epoch would replay batch 0 and the weights would differ.
    """
    common = [*TINY, "data.source.n_train=8", "trainer.max_epochs=-1", "eval.enabled=false", "optim.lr=1e-3", "scheduler=constant",
              "callbacks.checkpoint.every_n_train_steps=1"]
    straight = compose_cfg([*common, "trainer.max_steps=6"], tmp_path / "straight")
    train(straight)
    first = compose_cfg([*common, "trainer.max_steps=3"], tmp_path / "resumed")
    train(first)
    ckpt = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    resumed = compose_cfg([*common, "trainer.max_steps=6", f"ckpt_path={ckpt}"], tmp_path / "resumed")
    assert train(resumed)["global_step"] == 6
    a, b = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_cli_subprocess_runs_and_writes_run_dir(tmp_path):
    res = run_cli([*LNRL_TRAIN, "debug=fast", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((tmp_path / "train" / "runs").glob("*/metrics.json"))
    assert len(runs) == 1
    assert (runs[0].parent / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_malformed_jsonl_exits_nonzero_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"question": "What is 2+3?", "solution": "2+3=5\n#### 5"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    res = run_cli([*LNRL_TRAIN, "debug=fast", "data=jsonl", f"data.path={bad}",
                   f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    assert res.returncode != 0
    assert f"{bad}:3" in res.stderr + res.stdout


@pytest.mark.skipif(not SHARED_GSM8K.is_file(),
                    reason=f"needs ../shared: the shared GSM8K training split {SHARED_GSM8K} is absent")
def test_gsm8k_acceptance_command(tmp_path):
    """`lnrl-train model=tiny data=gsm8k data.path=<shared file> trainer.max_steps=5` (issue acceptance)."""
    cfg = compose_cfg([*TINY, "data=gsm8k", f"data.path={SHARED_GSM8K}", "trainer.max_steps=5"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 5
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "metrics.json").is_file()


def test_nan_loss_stops_before_the_update(tiny_cfg):
    from hydra.utils import instantiate

    from lnrl.utils import to_dict

    cfg = tiny_cfg()
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim),
                         scheduler=to_dict(cfg.scheduler))
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        module.on_before_backward(torch.tensor(float("nan")))
    module.on_before_backward(torch.tensor(1.0))  # finite: no error


def test_lnrl_eval_scores_an_exported_model(tiny_cfg, tmp_path):
    """lnrl-eval on a run's hf_model gives the numbers the end-of-fit evaluation gave for the same model."""
    from lnrl.apps.evaluate import main as eval_main

    metrics = train(tiny_cfg())
    eval_dir = tmp_path / "eval"
    cfg = compose_cfg(["model=hf", f"model.path={tmp_path / 'hf_model'}", "eval.n_examples=4",
                       "eval.max_new_tokens=8", "eval.batch_size=4", "data.source.n_train=16",
                       "data.source.n_eval=4"], eval_dir, config_name="eval")
    got = eval_main.__wrapped__(cfg)
    saved = json.loads((eval_dir / "metrics.json").read_text())
    assert saved["val/answer_acc"] == got["val/answer_acc"] == metrics["val/answer_acc"]
    assert abs(saved["val/nll"] - metrics["val/nll"]) < 1e-4
    assert len((eval_dir / "generations.jsonl").read_text().splitlines()) == 4


def test_crash_mid_fit_saves_a_resumable_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    """A loss that turns NaN at step 2 stops the run with a clear error and leaves on_exception.ckpt."""
    from lnrl.methods import VFTModule

    real = VFTModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss

    monkeypatch.setattr(VFTModule, "training_step", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train(tiny_cfg(["trainer.max_steps=5", "eval.enabled=false"]))
    state = torch.load(tmp_path / "checkpoints" / "on_exception.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_callbacks_none_writes_no_checkpoint(tiny_cfg, tmp_path):
    """Without a checkpoint callback Lightning would add its own; callbacks=none must mean no checkpoints."""
    train(tiny_cfg(["callbacks=none", "eval.enabled=false", "trainer.max_steps=1"]))
    assert not list(tmp_path.rglob("*.ckpt"))
