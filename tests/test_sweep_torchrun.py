"""scripts/sweep_torchrun.py: grid expansion, the exact torchrun commands, and a real 1-process sweep."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sweep_torchrun.py"
spec = importlib.util.spec_from_file_location("sweep_torchrun", SCRIPT)
st = importlib.util.module_from_spec(spec)
spec.loader.exec_module(st)


def test_grid_first_param_slowest():
    assert st.grid([("loss.beta", ["0.1", "0.5"]), ("seed", ["0", "1"])]) == [
        ["loss.beta=0.1", "seed=0"], ["loss.beta=0.1", "seed=1"], ["loss.beta=0.5", "seed=0"], ["loss.beta=0.5", "seed=1"]]
    assert st.grid([]) == [[]]  # no --param: one point with the common overrides


def test_bad_param_is_refused(capsys):
    with pytest.raises(SystemExit):
        st.main(["--param", "loss.beta", "--dry-run"])
    assert "expected KEY=V1,V2" in capsys.readouterr().err


def test_dry_run_prints_one_torchrun_per_point(tmp_path, capsys):
    assert st.main(["--dry-run", "--nproc", "4", "--dir", str(tmp_path / "s"), "--torchrun", "torchrun --nnodes 1",
                    "--param", "loss.beta=0.1,0.5", "--param", "seed=0,1", "--", "method=dpo_avg", "trainer=fsdp2"]) == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(cmds) == 4
    for i, (beta, seed) in enumerate([("0.1", "0"), ("0.1", "1"), ("0.5", "0"), ("0.5", "1")]):
        assert cmds[i] == ["torchrun", "--nnodes", "1", "--nproc_per_node", "4", "-m", "lnrl.apps.train", "method=dpo_avg",
                           "trainer=fsdp2", f"loss.beta={beta}", f"seed={seed}", "trainer.devices=4",
                           f"hydra.run.dir={tmp_path / 's' / str(i)}"]
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_explicit_devices_are_kept(tmp_path):
    cmd = st.torchrun_cmd(["torchrun"], 2, ["trainer.devices=1"], tmp_path)
    assert "trainer.devices=1" in cmd and "trainer.devices=2" not in cmd


@pytest.mark.slow
def test_real_sweep_with_a_failing_point(tmp_path):
    """Two 1-process torchrun points on the tiny model: the bogus one fails and is recorded, the other trains."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--nproc", "1", "--dir", str(sweep), "--param", "loss.normalize=bogus,sum", "--",
         "experiment=fixtures", "method=dpo", "callbacks=default", "trainer.max_steps=2", "eval.enabled=false",
         "trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    bad, good = sweep / "0", sweep / "1"
    info = json.loads((bad / "failed.json").read_text())
    assert info["error_type"] == "ValueError" and info["returncode"] != 0 and "bogus" in info["error"]
    assert (good / ".hydra" / "config.yaml").exists() and (good / "checkpoints" / "last.ckpt").exists()
    assert json.loads((good / "metrics.json").read_text())["global_step"] == 2
    assert "loss.normalize=sum" in (good / ".hydra" / "overrides.yaml").read_text()
    assert "Trainer.fit" in (good / "torchrun.log").read_text()  # the job's output is kept
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (1, 1)
    # --strict turns a failed point into a non-zero exit.
    res = subprocess.run([sys.executable, str(SCRIPT), "--strict", "--nproc", "1", "--dir", str(tmp_path / "s2"),
                          "--torchrun", f"{sys.executable} -c 'import sys; sys.exit(3)'"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    info = json.loads((tmp_path / "s2" / "0" / "failed.json").read_text())
    assert (info["error_type"], info["returncode"]) == ("ExitStatus", 3)
