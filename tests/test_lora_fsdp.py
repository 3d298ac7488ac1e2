"""LoRA under trainer=fsdp2: 2 gloo processes on CPU train, checkpoint, resume and export like 1 process.

As in test_fsdp_multiprocess.py, each training set is exactly one global batch (the 4 pairs of the
standard TRL fixture: 1 process x batch 4 = 2 processes x batch 2), so every step of every run trains
on the same rows, and the losses agree to float rounding (observed ~5e-6 relative). Step 0 is ln 2 in
both: the fresh adapter (B = 0) makes the policy equal its live reference, the adapter-disabled base.
The perf/* tokens of a step are summed over ranks, so they equal the 1-process count. The sharded run
also generates (end-of-fit evaluation) and exports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from test_fsdp_multiprocess import lnrl_train, logged, train_here

pytestmark = pytest.mark.slow  # two 2-process runs, ~40 s each on 2 CPU cores

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "prefs_trl_standard.jsonl"
COMMON = ["model=tiny", "experiment=fixtures", "method=dpo", "method.reference=live",
          "model.lora={r:4,alpha:8,save_adapter:true}", f"data.prefs_path={FIXTURE}", "optim.lr=1e-2",
          "scheduler=constant", "logger=csv", "eval.enabled=false", "trainer.limit_val_batches=0",
          "trainer.max_epochs=-1", "trainer.enable_progress_bar=false"]
FSDP2 = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2"]


def test_lora_fsdp2_matches_one_process_through_resume_and_export(tmp_path):
    from lnrl.models import export_checkpoint, load_policy

    single = train_here(tmp_path / "single", [*COMMON, "data.batch_size=4", "trainer.max_steps=5", "export_hf=false"])
    sharded = lnrl_train(tmp_path / "sharded", [*COMMON, *FSDP2, "trainer.max_steps=3", "callbacks=default",
                                                "export_hf=true", "eval.enabled=true"])
    resumed = lnrl_train(tmp_path / "resumed", [*COMMON, *FSDP2, "trainer.max_steps=5", "export_hf=false",
                                                f"ckpt_path={sharded / 'checkpoints' / 'last.ckpt'}"])
    want = logged(single, "train/loss")
    got = {**logged(sharded, "train/loss"), **logged(resumed, "train/loss")}
    assert want[0] == pytest.approx(math.log(2.0), abs=1e-6) and got[0] == pytest.approx(math.log(2.0), abs=1e-6)
    for step in range(5):
        assert got[step] == pytest.approx(want[step], rel=1e-4), f"step {step}: {got[step]} vs {want[step]}"
    tokens = {s: v * logged(single, "perf/step_time_s")[s] for s, v in logged(single, "perf/tokens_per_s").items()}
    two = {s: v * logged(sharded, "perf/step_time_s")[s] for s, v in logged(sharded, "perf/tokens_per_s").items()}
    assert all(two[s] == pytest.approx(tokens[s], rel=1e-5) for s in range(3))

    # The end-of-fit evaluation generates with the sharded LoRA model (generate() bypasses peft's forward).
    assert "val/answer_acc" in json.loads((sharded / "metrics.json").read_text())
    # The gathered export merges the adapters: a plain model equal to lnrl-export of the sharded checkpoint.
    hf = load_policy({"source": "hf", "path": str(sharded / "hf_model")}).model
    out = export_checkpoint(sharded / "checkpoints" / "last.ckpt", tmp_path / "exported")
    exported = load_policy({"source": "hf", "path": str(out)}).model
    assert type(hf).__name__ == "LlamaForCausalLM" and (sharded / "hf_model" / "adapter").is_dir()
    for (name, a), b in zip(hf.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name
