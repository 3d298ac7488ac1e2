"""trainer=fsdp2 with 2 gloo processes on CPU, through `lnrl-train` subprocesses (Lightning launches rank 1).

The comparison behind every parity test: 2 processes x batch 2 must train exactly like 1 process x
batch 4 (the same global batch): FSDP2 averages gradients over ranks and Lightning averages the
logged per-rank losses, so each step's loss is the mean over the same 4 rows either way. Each
training set is exactly one global batch, so every step trains on all of it whatever the row order:
under several processes Lightning re-shuffles the datamodule's sampler order (DistributedSamplerWrapper
with shuffle=True), so on a larger set the 2-process batches would not be the 1-process ones.

Tolerance: 1e-4 relative on the loss. The math is identical; only the float summation order differs
(one batch-4 matmul vs two batch-2 matmuls, then a gloo reduce-scatter); observed: 0 for VFT, ~1e-6
for DPO after 3 steps, as Adam's normalized update can enlarge rounding differences a little. The faults these tests
are for move the loss further at lr 1e-3: a rank's rows dropped or counted twice changes the update
direction; weights not restored on resume change the first resumed loss; Adam moments not restored
change the second one by ~1.5e-3 relative (measured on this tiny model). (Adam is blind to a constant
gradient scale, so summed-vs-averaged gradients would not show in the loss; the logged loss and
the rank probe check the metric reduction instead.)

Equal token counts: VFT's loss is a token mean per rank, and the mean of two token means is the
global token mean only when both ranks hold as many tokens. The VFT rows here are all one length
(two-digit sums), so the runs are comparable row for row. (DPO's loss is a per-pair mean: no such
condition.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

# Each 2-process run is a subprocess pair, ~20-40 s on 2 CPU cores. One xdist group (the Makefile runs
# --dist loadgroup): the module-scoped runs are built once, by one worker, not once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fsdp2")]

TESTS = Path(__file__).resolve().parent
FSDP2 = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2"]
RTOL = 1e-4


class RankProbe(pl.Callback):
    """Logs this process's rank every step; reduced across ranks it must read as their mean."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("test/rank", float(trainer.global_rank), on_step=True, on_epoch=False, sync_dist=True,
                      batch_size=1)


def lnrl_train(run_dir: Path, overrides: list[str], timeout: int = 300) -> Path:
    """Run lnrl-train; on timeout kill the whole process group (rank 1 is rank 0's child: a hung
    collective would otherwise outlive the test)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "lnrl.apps.train", f"hydra.run.dir={run_dir}", *overrides]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"lnrl-train {' '.join(overrides)} still running after {timeout} s (a hang?)")
    if proc.returncode != 0:
        failed = run_dir / "failed.json"
        detail = json.loads(failed.read_text())["traceback"] if failed.is_file() else output[-4000:]
        raise AssertionError(f"lnrl-train {' '.join(overrides)} failed (rc {proc.returncode}):\n{detail}")
    return run_dir


def train_here(run_dir: Path, overrides: list[str]) -> Path:
    """The 1-process baseline, in this process (saves a subprocess start)."""
    from conftest import compose_cfg
    from lnrl.apps.train import train

    train(compose_cfg(overrides, run_dir))
    return run_dir


def logged(run_dir: Path, column: str) -> dict[int, float]:
    """step -> value of one column of the CSV logger's metrics.csv (rank 0 writes it)."""
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r.get(column)}


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=RTOL), f"step {step}: {got[step]} vs {want[step]}"


@pytest.fixture(scope="module")
def vft_data(tmp_path_factory) -> Path:
    """6 questions whose prompt and solution token counts are all equal (digits are single tokens)."""
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    rows = [(12, 34), (57, 21), (40, 18), (23, 45), (31, 16), (44, 25)]
    path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?",
                                        "solution": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n" for a, b in rows))
    return path


@pytest.fixture(scope="module")
def vft_common(vft_data) -> list[str]:
    # 4 training rows = one global batch: every step sees the whole set, whatever the row order.
    return ["model=tiny", "data=jsonl", f"data.path={vft_data}", "data.source.n_train=4",
            "data.source.n_eval=2", "logger=csv", "scheduler=constant", "optim.lr=1e-3", "trainer.max_epochs=-1",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "eval.n_examples=2",
            "eval.max_new_tokens=4", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def vft_single(tmp_path_factory, vft_common) -> Path:
    """1 process x batch 4, 5 steps straight."""
    return train_here(tmp_path_factory.mktemp("vft") / "single",
                      [*vft_common, "data.batch_size=4", "trainer.max_steps=5", "eval.enabled=false",
                       "callbacks=none", "export_hf=false"])


@pytest.fixture(scope="module")
def vft_sharded(tmp_path_factory, vft_common) -> Path:
    """2 processes x batch 2, 3 steps, sharded checkpoint, generation eval and hf_model export at the end."""
    return lnrl_train(tmp_path_factory.mktemp("vft") / "sharded",
                      [*vft_common, *FSDP2, "data.batch_size=2", "trainer.max_steps=3",
                       "+callbacks.rank_probe._target_=test_fsdp_multiprocess.RankProbe"])


@pytest.fixture(scope="module")
def vft_resumed(tmp_path_factory, vft_common, vft_sharded) -> Path:
    """The sharded run resumed from its checkpoint directory, to 5 steps."""
    return lnrl_train(tmp_path_factory.mktemp("vft") / "resumed",
                      [*vft_common, *FSDP2, "data.batch_size=2", "trainer.max_steps=5", "eval.enabled=false",
                       "export_hf=false", f"ckpt_path={vft_sharded / 'checkpoints' / 'last.ckpt'}"])


def test_vft_two_processes_match_one_process(vft_single, vft_sharded):
    single, sharded = logged(vft_single, "train/loss"), logged(vft_sharded, "train/loss")
    assert sorted(sharded) == [0, 1, 2]
    assert_same_losses(sharded, single, range(3))
    assert single[2] < single[0] - 1e-3  # the weights really moved, so the later steps test the update


def test_metrics_are_the_mean_over_ranks(vft_sharded):
    """Rank 0 logs 0, rank 1 logs 1: the logged value is 0.5 at every step."""
    assert logged(vft_sharded, "test/rank") == {0: 0.5, 1: 0.5, 2: 0.5}


def test_fit_end_generation_eval_runs_under_fsdp2(vft_sharded):
    """The end-of-fit evaluation generated on the sharded model (it would hang without synced_gpus if
    the ranks stopped at different lengths) and its metrics reached metrics.json."""
    metrics = json.loads((vft_sharded / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["val/n_examples"] == 2.0
    assert 0 < metrics["val/gen_len"] <= 4


def test_sharded_checkpoint_is_a_directory_of_shards(vft_sharded):
    ckpt = vft_sharded / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir()
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    meta = torch.load(ckpt / "meta.pt", weights_only=False)
    assert meta["global_step"] == 3 and meta["lnrl_model_cfg"]["source"] == "tiny"


def test_resume_from_sharded_checkpoint_continues(vft_single, vft_resumed):
    """Steps 3-4 after the resume equal steps 3-4 of the straight 1-process run: weights and Adam moments
    were restored (constant LR, so the schedule cannot hide a restart)."""
    resumed = logged(vft_resumed, "train/loss")
    assert sorted(resumed) == [3, 4]
    assert json.loads((vft_resumed / "metrics.json").read_text())["global_step"] == 5
    assert_same_losses(resumed, logged(vft_single, "train/loss"), range(3, 5))


def test_export_of_sharded_checkpoint_loads_and_evaluates(vft_sharded, tmp_path):
    """lnrl-export of the checkpoint directory == train.py's end-of-run hf_model (gathered from the
    shards on rank 0), and `model=hf` loads it for evaluation."""
    from lnrl.data import Example
    from lnrl.evaluation import evaluate_model
    from lnrl.models import export_checkpoint
    from lnrl.models import load_model, load_tokenizer

    out = export_checkpoint(vft_sharded / "checkpoints" / "last.ckpt", tmp_path / "hf")
    exported = load_model({"source": "hf", "path": str(out)})
    gathered = load_model({"source": "hf", "path": str(vft_sharded / "hf_model")})
    fresh = load_model({"source": "tiny"}, load_tokenizer({"source": "tiny"}))
    x = torch.randint(3, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = (m(input_ids=x).logits for m in (exported, gathered, fresh))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4  # trained weights, not a fresh init
    tok = load_tokenizer({"source": "hf", "path": str(out)})
    examples = [Example(id="t/0", question="What is 12 + 34?", solution="12 + 34 = 46\n#### 46", answer="46",
                        source="test", meta={})]
    result = evaluate_model(exported, tok, examples, max_new_tokens=4, progress=False)
    metrics = result.metrics
    assert metrics["val/n_examples"] == 1.0 and len(result.generations) == 1 and metrics["val/nll"] > 0


@pytest.fixture(scope="module")
def dpo_prefs(tmp_path_factory) -> Path:
    """Two fixture questions giving 4 + 4 (correct, incorrect) pairs: 8 pairs, one global batch."""
    from lnrl.data import make_pairs, read_groups
    from lnrl.utils import PACKAGE_DIR

    lines = (PACKAGE_DIR / "fixtures" / "groups_tiny.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("prefs") / "groups.jsonl"
    path.write_text(lines[0] + "\n" + lines[3] + "\n")
    assert len(make_pairs(read_groups(path), rule="all", gold_as_chosen=True)) == 8
    return path


def test_dpo_two_processes_match_one_process(tmp_path, dpo_prefs):
    """DPO, live reference (its forward runs on every rank too): 2 x batch 4 == 1 x batch 8.

    The loss is a mean over pairs, so equal per-rank pair counts make it the global mean."""
    common = ["experiment=fixtures", "method=dpo", "method.reference=live", f"data.prefs_path={dpo_prefs}",
              "logger=csv", "scheduler=constant", "optim.lr=1e-3", "trainer.max_steps=3", "trainer.max_epochs=-1",
              "trainer.limit_val_batches=0", "eval.enabled=false", "trainer.enable_progress_bar=false"]
    single = logged(train_here(tmp_path / "single", [*common, "data.batch_size=8"]), "train/loss")
    sharded = logged(lnrl_train(tmp_path / "sharded", [*common, *FSDP2, "data.batch_size=4"]), "train/loss")
    assert single[0] == pytest.approx(0.6931472, rel=1e-5)  # policy == live reference at step 0: ln 2
    assert single[2] < single[0] - 1e-3
    assert_same_losses(sharded, single, range(3))


def test_aft_metrics_some_ranks_lack_do_not_hang(tmp_path):
    """AFT, one group per rank per step over the 6 fixture groups: at some step one rank holds the
    all-correct group (no `scores/negative`) while the other has negatives. Per-key sync_dist would
    issue mismatched all-reduces and hang; reduce_metrics logs the mean over the ranks that have it."""
    run = lnrl_train(tmp_path / "aft", ["experiment=fixtures", "method=aft", "loss.constraint=boundary",
                                        "loss.boundary=0.5", "logger=csv", "data.batch_size=1", "trainer.max_steps=3",
                                        "trainer.limit_val_batches=0", "eval.enabled=false",
                                        "trainer.enable_progress_bar=false", *FSDP2], timeout=180)
    losses, negatives = logged(run, "train/loss"), logged(run, "scores/negative")
    assert sorted(losses) == sorted(negatives) == [0, 1, 2]
    assert all(v == v and v < 0 for v in negatives.values())  # defined (not NaN), a log-likelihood
    assert logged(run, "aft/groups") == {0: 1.0, 1: 1.0, 2: 1.0}
