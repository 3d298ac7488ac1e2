"""Exact resume after `kill -9` mid-epoch, under the default cosine schedule (issue 10).

Each method trains in a subprocess that checkpoints every step; after step K it stops in a callback that
runs before that step's checkpoint is written, and the test SIGKILLs it there: the work of step K is lost,
last.ckpt holds step K-1, the epoch is half done. `ckpt_path=last.ckpt` then trains on to the end, and the
final weights must equal an uninterrupted run's: the weights, AdamW moments, cosine schedule position,
step count and the data order within the epoch all come back (any of them missing changes the weights).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import TINY, compose_cfg
from lnrl.apps.train import train
from lnrl.checkpoint_io import check_checkpoint

pytestmark = pytest.mark.slow  # a subprocess per method

TESTS = Path(__file__).resolve().parent
MARKER = "LNRL_TEST_WAITING_FOR_KILL"
COMMON = ["eval.enabled=false", "export_hf=false", "callbacks=default", "callbacks.checkpoint.every_n_train_steps=1",
          "trainer.max_steps=6", "trainer.max_epochs=-1", "optim.lr=3e-3"]  # scheduler: the default, cosine
METHODS = {  # overrides, the step after which the run is killed
    # 8 rows, batch 2: 4 batches an epoch; killed in step 3 of epoch 0.
    "vft": ([*TINY, "data.source.n_train=8", *COMMON], 3),
    # the fixture's pairs, batch 2; the live reference is rebuilt from the starting model on resume.
    "dpo_live": (["experiment=fixtures", "method=dpo", "method.reference=live", *COMMON], 3),
    # 6 groups, batch 2: 3 batches an epoch; killed in step 5, the second of epoch 1.
    "aft": (["experiment=fixtures", "method=aft", "loss.constraint=boundary", *COMMON], 5),
}


class WaitForKill(pl.Callback):
    """At the end of step LNRL_TEST_KILL_AT, before its checkpoint (Lightning runs ModelCheckpoint after
    the other callbacks): announce it and wait for SIGKILL."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == int(os.environ["LNRL_TEST_KILL_AT"]):
            print(MARKER, flush=True)
            time.sleep(600)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def kill_mid_run(run_dir: Path, overrides: list[str], kill_at: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "LNRL_TEST_KILL_AT": str(kill_at),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "lnrl.apps.train", f"hydra.run.dir={run_dir}", *overrides,
            "+callbacks.wait_for_kill._target_=test_reliability_resume.WaitForKill"]
    proc = subprocess.Popen(args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    seen = []
    try:
        deadline = time.time() + 300
        for line in proc.stdout:
            seen.append(line)
            if MARKER in line or time.time() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert any(MARKER in line for line in seen), "".join(seen[-50:])
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(method, tmp_path):
    overrides, kill_at = METHODS[method]
    train(compose_cfg(overrides, tmp_path / "straight"))

    run = tmp_path / "killed"
    run.mkdir()
    kill_mid_run(run, overrides, kill_at)
    last = run / "checkpoints" / "last.ckpt"
    assert check_checkpoint(last)["global_step"] == kill_at - 1  # step kill_at was lost with the process
    assert not (run / "metrics.json").exists()

    at_kill = weights(run)
    metrics = train(compose_cfg([*overrides, f"ckpt_path={last}"], run))
    assert metrics["global_step"] == 6
    straight, resumed = weights(tmp_path / "straight"), weights(run)
    assert straight.keys() == resumed.keys()
    assert any(not torch.equal(at_kill[k], resumed[k]) for k in resumed)  # the resumed run did train
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
