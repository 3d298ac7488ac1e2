"""The NaN guard (issue 10): no poisoned recovery point, no silent absurd run, no hang across ranks.

Before: the guard checked the loss only. With `optim.lr=1e30` the update made the weights NaN, the guard
stopped one step later saying "weights were not updated" and pointed to on_exception.ckpt, whose weights
and optimizer state were all NaN (and last.ckpt had been overwritten with them). `loss.beta=1e30` gave
losses of 1e31, finished with train/loss 0.0 and exit 0. A NaN on one rank under FSDP2 stopped that
rank before backward while the other waited in the gradient reduce-scatter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import TINY, compose_cfg
from lnrl.apps.train import train
from lnrl.checkpoint_io import check_checkpoint
from lnrl.methods import LnrlModule, SFTModule
from lnrl.methods.base import LOSS_LIMIT

TESTS = Path(__file__).resolve().parent
# Checkpoints every step, enough steps that the fault lands after some good ones.
EVERY_STEP = ["callbacks=default", "callbacks.checkpoint.every_n_train_steps=1", "eval.enabled=false",
              "trainer.max_steps=5", "trainer.max_epochs=-1"]
METHODS = {
    "vft": [*TINY, *EVERY_STEP],
    "dpo": ["experiment=fixtures", "method=dpo", *EVERY_STEP],
    "aft": ["experiment=fixtures", "method=aft", "loss.constraint=boundary", *EVERY_STEP],
}
BAD_STEP = 2


class LrBomb(pl.Callback):
    """Sets the learning rate to 1e30 for the update that follows step BAD_STEP's checkpoint."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == BAD_STEP:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e30


class GradBomb(pl.Callback):
    """Puts a NaN into one gradient at step BAD_STEP; the loss stays finite."""

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == BAD_STEP:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def all_finite(path: Path) -> bool:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    tensors = list(ckpt["state_dict"].values()) + [v for s in ckpt["optimizer_states"] for st in s["state"].values()
                                                    for v in st.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_overflowing_update_stops_before_it_is_saved_and_names_the_last_finite_checkpoint(method, tmp_path):
    cfg = compose_cfg([*METHODS[method], "+callbacks.bomb._target_=test_reliability_guard.LrBomb"], tmp_path)
    with pytest.raises(FloatingPointError) as e:
        train(cfg)
    ckpts = tmp_path / "checkpoints"
    last = ckpts / "last.ckpt"
    msg = str(e.value)
    assert f"optimizer update at global step {BAD_STEP} made the weights non-finite" in msg, msg
    assert f"{last} (step {BAD_STEP}): resume with ckpt_path={last}" in msg, msg
    assert not (ckpts / "on_exception.ckpt").exists()  # the poisoned state is saved nowhere
    assert check_checkpoint(last)["global_step"] == BAD_STEP and all_finite(last)
    assert any("not written" in n for n in e.value.__notes__)


@pytest.mark.parametrize("method", ["dpo", "aft"])
def test_nan_loss_stops_before_the_update_and_saves_the_finite_state(method, tmp_path, monkeypatch):
    """(VFT: tests/test_train.py::test_crash_mid_fit_saves_a_resumable_checkpoint.)"""
    real = LnrlModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == BAD_STEP else loss

    monkeypatch.setattr(LnrlModule, "training_step", poisoned)
    with pytest.raises(FloatingPointError, match=f"non-finite training loss .* at global step {BAD_STEP}") as e:
        train(compose_cfg(METHODS[method], tmp_path))
    saved = tmp_path / "checkpoints" / "on_exception.ckpt"
    assert check_checkpoint(saved)["global_step"] == BAD_STEP and all_finite(saved)
    for key, value in weights(tmp_path / "checkpoints" / "last.ckpt").items():  # not updated
        assert torch.equal(weights(saved)[key], value), key
    assert any(f"saved to {saved}" in n for n in e.value.__notes__)


def test_nan_gradient_with_a_finite_loss_stops_before_the_update(tmp_path):
    with pytest.raises(FloatingPointError, match=f"gradient norm not finite at global step {BAD_STEP}"):
        train(compose_cfg([*METHODS["vft"], "+callbacks.bomb._target_=test_reliability_guard.GradBomb"], tmp_path))
    saved, last = tmp_path / "checkpoints" / "on_exception.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    assert all_finite(saved) and check_checkpoint(saved)["global_step"] == BAD_STEP
    for key, value in weights(last).items():
        assert torch.equal(weights(saved)[key], value), key


def test_absurd_dpo_loss_stops_instead_of_training_to_zero(tmp_path):
    """loss.beta=1e30 with the fixture's cached references: the first losses are about 1e31. Before, the
    run finished with train/loss 0.0 and exit 0. No step was taken, so no checkpoint is written."""
    with pytest.raises(FloatingPointError, match=r"absurd training loss \(1\.\d+e\+31, above LOSS_LIMIT=1e\+06\) "
                                                 r"at global step 0"):
        train(compose_cfg([*METHODS["dpo"], "loss.beta=1e30"], tmp_path))
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "metrics.json").exists()


def test_absurd_beta_with_a_live_reference_stops_at_the_gradient(tmp_path):
    """Policy == live reference at step 0, so the loss is ln 2 (finite, plausible); the gradient is
    beta times an ordinary one and overflows."""
    with pytest.raises(FloatingPointError, match="gradient norm (not finite|.* above GRAD_NORM_LIMIT) at global "
                                                 "step 0"):
        train(compose_cfg([*METHODS["dpo"], "method.reference=live", "loss.beta=1e30"], tmp_path))
    assert not (tmp_path / "metrics.json").exists()


def test_loss_limit_is_inclusive_and_names_itself(tiny_cfg):
    from hydra.utils import instantiate

    from lnrl.utils import to_dict

    cfg = tiny_cfg()
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim))
    module.on_before_backward(torch.tensor(LOSS_LIMIT))
    module.on_before_backward(torch.tensor(-LOSS_LIMIT))
    for bad in (LOSS_LIMIT * 1.01, float("inf"), float("-inf")):
        with pytest.raises(FloatingPointError, match="LOSS_LIMIT|non-finite"):
            module.on_before_backward(torch.tensor(bad))


# ----------------------------------------------------------------------------- FSDP2, one rank


class NanOnRank1(SFTModule):
    """VFT whose loss is NaN on rank 1 only, at step 1."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_rank == 1 and self.global_step == 1 else loss


@pytest.mark.slow
@pytest.mark.xdist_group("fsdp2")
def test_nan_on_one_rank_stops_every_rank_under_fsdp2(tmp_path):
    """trainer=fsdp2, 2 gloo processes: rank 1's loss is NaN at step 1. Every rank must stop with the
    error (all-reduce of a finite flag), not leave rank 0 waiting in backward's reduce-scatter."""
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {a + 3}?", "solution": f"#### {2 * a + 3}"}) + "\n"
                            for a in range(10, 16)))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "lnrl.apps.train", f"hydra.run.dir={run}", "model=tiny", "data=jsonl",
            f"data.path={data}", "data.source.n_train=4", "data.source.n_eval=2", "data.batch_size=1", "logger=none",
            "trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "eval.enabled=false",
            "method._target_=test_reliability_guard.NanOnRank1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"hung: rank 0 waits for rank 1, which stopped alone\n{out[-3000:]}") from None
    assert proc.returncode != 0
    assert "non-finite training loss (nan) (1 of 2 ranks) at global step 1" in out, out[-4000:]  # rank 1
    failed = json.loads((run / "failed.json").read_text())  # rank 0
    assert "training loss on another rank (1 of 2 ranks) at global step 1" in failed["error"], failed["error"]
    # The state at step 1 is finite on both ranks: saved as a sharded checkpoint by both.
    assert (run / "checkpoints" / "on_exception.ckpt" / ".metadata").is_file()
