"""lnrl-report on a hand-written sweep directory: grouping, mean ± std by hand, failed runs, plots."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lnrl.apps.report import main
from lnrl.reporting import mean_std, report

REPO = Path(__file__).resolve().parents[1]


def make_run(root: Path, name: str, *, method: str, loss: dict, seed: int, metrics: dict | None = None,
             error: str | None = None, extra_overrides: tuple[str, ...] = ()) -> Path:
    """A run dir as Hydra + lnrl-train leave it: .hydra/{config,hydra,overrides}.yaml and metrics/failed.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    target = {"dpo": "DPOModule", "dpo_avg": "DPOModule", "aft": "AFTModule"}[method]
    cfg = {"seed": seed, "method": {"_target_": f"lnrl.methods.{target}"}, "loss": loss, "optim": {"lr": 1e-5}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"method": method}}}}))
    overrides = [f"loss.{k}={v}" for k, v in loss.items() if k != "name"] + [f"seed={seed}", *extra_overrides]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps({**metrics, "method": target, "model": "tiny-llama"}))
    if error is not None:
        (run / "failed.json").write_text(json.dumps({"error_type": "ValueError", "error": error}))
    return run


def dpo(beta, normalize):
    return {"name": "dpo", "beta": beta, "normalize": normalize, "constraint": "none", "boundary": 0.5}


@pytest.fixture
def sweep(tmp_path):
    """DPO beta {0.1, 0.5} x normalize {sum, mean} x seeds, plus one failed and one incomplete point.

    acc(0.1, sum)  = 0.2, 0.4, 0.6 -> mean 0.4, sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    acc(0.5, sum)  = 0.5, 0.5      -> mean 0.5, std 0
    acc(0.1, mean) = 0.1, 0.4      -> mean 0.25, std sqrt(2 * 0.15^2 / 1) = 0.15 * sqrt(2)
    acc(0.5, mean) = 0.3 (seed 1 failed, seed 2 incomplete) -> n 1, no std
    gen_len / margins on (0.1, sum): 100, 120, 140 / 1.0, 2.0, 3.0 -> gen_len mean 120, std 20
    """
    root = tmp_path / "multirun"
    i = iter(range(100))
    for seed, acc, gl, m in [(0, 0.2, 100, 1.0), (1, 0.4, 120, 2.0), (2, 0.6, 140, 3.0)]:
        make_run(root, str(next(i)), method="dpo", loss=dpo(0.1, "sum"), seed=seed,
                 metrics={"val/answer_acc": acc, "val/gen_len": gl, "rewards/margins": m, "train/loss": 0.6})
    for seed in (0, 1):
        make_run(root, str(next(i)), method="dpo", loss=dpo(0.5, "sum"), seed=seed,
                 metrics={"val/answer_acc": 0.5, "val/gen_len": 90, "rewards/margins": 0.5})
    for seed, acc in [(0, 0.1), (1, 0.4)]:
        make_run(root, str(next(i)), method="dpo", loss=dpo(0.1, "mean"), seed=seed,
                 metrics={"val/answer_acc": acc, "val/gen_len": 80, "rewards/margins": 0.1})
    make_run(root, str(next(i)), method="dpo", loss=dpo(0.5, "mean"), seed=0, metrics={"val/answer_acc": 0.3})
    make_run(root, str(next(i)), method="dpo", loss=dpo(0.5, "mean"), seed=1, error="normalize must be sum|mean")
    make_run(root, str(next(i)), method="dpo", loss=dpo(0.5, "mean"), seed=2)  # killed: no metrics, no failed.json
    (root / "multirun.yaml").write_text("{}\n")  # Hydra's sweep-level file: not a run
    (root / "eval" / ".hydra").mkdir(parents=True)  # an lnrl-eval run dir (no method): not a training run
    (root / "eval" / ".hydra" / "config.yaml").write_text("model: {name: tiny}\n")
    (root / "eval" / "metrics.json").write_text('{"val/answer_acc": 1.0}')
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_mean_std_by_hand():
    assert mean_std([0.2, 0.4, 0.6]) == pytest.approx((0.4, 0.2))
    assert mean_std([3.0]) == (3.0, None)
    assert mean_std([]) == (None, None)


def test_grouped_table_numbers(sweep):
    rep = report(sweep)
    by = {(r["loss.beta"], r["loss.normalize"]): r for r in rep["rows"]}
    assert len(rep["runs"]) == 10 and len(by) == 4
    g = by[(0.1, "sum")]
    assert (g["n"], g["failed"], g["seeds"]) == (3, 0, [0, 1, 2])
    assert g["val/answer_acc_mean"] == pytest.approx(0.4) and g["val/answer_acc_std"] == pytest.approx(0.2)
    assert g["val/gen_len_mean"] == pytest.approx(120) and g["val/gen_len_std"] == pytest.approx(20)
    assert by[(0.5, "sum")]["val/answer_acc_std"] == pytest.approx(0.0)
    assert by[(0.1, "mean")]["val/answer_acc_std"] == pytest.approx(0.15 * math.sqrt(2))
    g = by[(0.5, "mean")]
    assert (g["n"], g["failed"], g["incomplete"], g["val/answer_acc_std"]) == (1, 1, 1, None)
    # Rows ordered by the key columns (method, loss.name, loss.beta, loss.normalize, ...), numbers by value.
    assert [(r["loss.beta"], r["loss.normalize"]) for r in rep["rows"]] == [
        (0.1, "mean"), (0.1, "sum"), (0.5, "mean"), (0.5, "sum")]
    # train/loss only exists in some runs; metrics absent everywhere are not columns.
    assert rep["metrics"] == ["val/answer_acc", "val/gen_len", "rewards/margins", "train/loss"]
    assert "0.4 ± 0.2" in rep["table"] and "| dpo | dpo | 0.1 | sum | none | 0.5 | 3 | 0 |" in rep["table"]


def test_files_and_failed_runs(sweep, tmp_path):
    out = tmp_path / "rep"
    rep = report(sweep, out)
    rows = read_csv(out / "report.csv")
    row = next(r for r in rows if r["loss.beta"] == "0.1" and r["loss.normalize"] == "sum")
    assert float(row["val/answer_acc_mean"]) == pytest.approx(0.4)
    assert float(row["val/answer_acc_std"]) == pytest.approx(0.2)
    assert row["seeds"] == "0,1,2"
    runs = read_csv(out / "runs.csv")
    assert sorted(r["status"] for r in runs) == ["failed"] + ["incomplete"] + ["ok"] * 8
    failed = next(r for r in runs if r["status"] == "failed")
    assert failed["error"] == "ValueError: normalize must be sum|mean" and failed["seed"] == "1"
    md = (out / "report.md").read_text()
    assert "## Failed or incomplete runs" in md and "normalize must be sum\\|mean" in md
    assert {p.name for p in rep["plots"]} == {"acc_vs_beta.png", "len_vs_margin.png"}
    for p in rep["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({p.name})" in md
    # Every run has loss.boundary 0.5: that plot has no axis, so it is skipped with a note, not drawn empty.
    assert not (out / "acc_vs_boundary.png").exists()
    assert any("acc_vs_boundary.png" in n and "loss.boundary" in n for n in rep["notes"])


def test_aft_boundary_plot_and_extra_override_columns(tmp_path):
    """AFT runs over constraint x boundary, and an optim.lr override that varies: lr becomes a group key."""
    root = tmp_path / "aft"
    n = 0
    for constraint in ("none", "boundary"):
        for boundary in (0.25, 1.0):
            for seed, lr in [(0, "1e-5"), (1, "1e-5"), (0, "1e-4")]:
                acc = 0.3 + (0.2 if constraint == "boundary" else 0) + (0.1 if lr == "1e-4" else 0) + 0.01 * seed
                make_run(root, str(n), method="aft", seed=seed, metrics={"val/answer_acc": acc},
                         loss={"name": "aft", "constraint": constraint, "boundary": boundary, "normalize": "mean"},
                         extra_overrides=(f"optim.lr={lr}",))
                n += 1
    rep = report(root)
    assert rep["fields"][-1] == "optim.lr"
    g = next(r for r in rep["rows"] if r["loss.constraint"] == "boundary" and r["loss.boundary"] == 1.0
             and r["optim.lr"] == "1e-5")
    # seeds 0, 1: 0.50, 0.51 -> mean 0.505, std 0.01 / sqrt(2)
    assert g["n"] == 2 and g["val/answer_acc_mean"] == pytest.approx(0.505)
    assert g["val/answer_acc_std"] == pytest.approx(0.01 / math.sqrt(2))
    assert "loss.beta" not in rep["table"]  # AFT has no beta: the empty column is dropped
    assert {p.name for p in rep["plots"]} == {"acc_vs_boundary.png"}
    assert len(rep["notes"]) == 2  # no beta, no reward margins


def test_main_prints_table_and_failures(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "r"), "--metrics", "val/answer_acc", "val/gen_len"]) == 0
    out = capsys.readouterr().out
    assert "| 0.4 ± 0.2 | 120 ± 20 |" in out and "rewards/margins" not in out
    assert "FAILED: loss.beta=0.5" in out and "ValueError: normalize must be sum|mean" in out
    assert (tmp_path / "r" / "report.csv").exists() and not (sweep / "report.md").exists()


@pytest.mark.slow
def test_cli(sweep, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "lnrl.apps.report", str(sweep), "--metrics", "val/answer_acc"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "| 0.4 ± 0.2 |" in res.stdout and "FAILED:" in res.stdout and "INCOMPLETE:" in res.stdout
    assert (sweep / "report.md").exists() and (sweep / "acc_vs_beta.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no run directory" in capsys.readouterr().err
