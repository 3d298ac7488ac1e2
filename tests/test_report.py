"""lnrl-report on a hand-written sweep directory: grouping, mean ± std and intervals by hand, paired
differences to a baseline group, failed runs, plots."""

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
             error: str | None = None, extra_overrides: tuple[str, ...] = (), generations: list | None = None) -> Path:
    """A run dir as Hydra + lnrl-train leave it: .hydra/{config,hydra,overrides}.yaml, metrics/failed.json and,
    with eval on, generations.json (one record per held-out question)."""
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
    if generations is not None:
        (run / "generations.json").write_text(json.dumps(generations))
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
    # No per-question records: a t interval over the 3 seed means, 0.4 ± t(0.975, 2) * 0.2 / sqrt(3)
    # = 0.4 ± 4.302653 * 0.11547 = 0.4 ± 0.49683; with one seed, no interval.
    assert g["val/answer_acc_interval"] is None and by[(0.1, "sum")]["val/answer_acc_interval"] == "t_seeds"
    assert by[(0.1, "sum")]["questions"] is None
    assert (by[(0.1, "sum")]["val/answer_acc_low"], by[(0.1, "sum")]["val/answer_acc_high"]) == pytest.approx(
        (0.4 - 0.496828, 0.4 + 0.496828), abs=1e-5)
    assert "| 0.4 [-0.09683, 0.8968] t |" in rep["table"] and "| 0.3 |" in rep["table"]
    assert "| dpo | dpo | 0.1 | sum | none | 0.5 | 3 |  | 0 |" in rep["table"]


def test_files_and_failed_runs(sweep, tmp_path):
    out = tmp_path / "rep"
    rep = report(sweep, out)
    rows = read_csv(out / "report.csv")
    row = next(r for r in rows if r["loss.beta"] == "0.1" and r["loss.normalize"] == "sum")
    assert float(row["val/answer_acc_mean"]) == pytest.approx(0.4)
    assert float(row["val/answer_acc_std"]) == pytest.approx(0.2)
    assert float(row["val/answer_acc_low"]) == pytest.approx(0.4 - 0.496828, abs=1e-5)
    assert row["val/answer_acc_interval"] == "t_seeds" and row["seeds"] == "0,1,2"
    runs = read_csv(out / "runs.csv")
    assert sorted(r["status"] for r in runs) == ["failed"] + ["incomplete"] + ["ok"] * 8
    failed = next(r for r in runs if r["status"] == "failed")
    assert failed["error"] == "ValueError: normalize must be sum|mean" and failed["seed"] == "1"
    md = (out / "report.md").read_text()
    assert "## Failed or incomplete runs" in md and "normalize must be sum\\|mean" in md
    assert {p.name for p in rep["plots"]} == {"acc_vs_beta.png", "groups.png", "len_vs_margin.png"}
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
    assert {p.name for p in rep["plots"]} == {"acc_vs_boundary.png", "groups.png"}
    assert len(rep["notes"]) == 2  # no beta, no reward margins


def test_main_prints_table_and_failures(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "r"), "--metrics", "val/answer_acc", "val/gen_len"]) == 0
    out = capsys.readouterr().out
    # gen_len 100, 120, 140: 120 ± 4.302653 * 20 / sqrt(3) = 120 ± 49.68
    assert "| 0.4 [-0.09683, 0.8968] t | 120 [70.32, 169.7] t |" in out and "rewards/margins" not in out
    assert "FAILED: loss.beta=0.5" in out and "ValueError: normalize must be sum|mean" in out
    assert (tmp_path / "r" / "report.csv").exists() and not (sweep / "report.md").exists()


@pytest.mark.slow
def test_cli(sweep, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "lnrl.apps.report", str(sweep), "--metrics", "val/answer_acc"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "| 0.4 [-0.09683, 0.8968] t |" in res.stdout and "FAILED:" in res.stdout and "INCOMPLETE:" in res.stdout
    assert (sweep / "report.md").exists() and (sweep / "acc_vs_beta.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no run directory" in capsys.readouterr().err


def gens(correct: list[int], tokens: list[int]) -> list[dict]:
    """generations.json of a training run: one record per held-out question (ids q1..q6)."""
    return [{"id": f"q{i + 1}", "correct": bool(c), "n_tokens": t, "truncated": False} for i, (c, t)
            in enumerate(zip(correct, tokens))]


@pytest.fixture
def recorded(tmp_path):
    """DPO normalize sum (seeds 0, 1) vs mean (seeds 0, 1) with per-question records on 6 questions.

    sum:  correct 1 0 0 1 0 0 (both seeds)      -> 1/3; tokens 10..60 -> 35
    mean: correct 1 1 1 1 0 0 / 1 1 1 1 1 0     -> 0.75; tokens +2 -> 37
    mean - sum per question (seed means): 0, 1, 1, 0, 1/2, 0 -> +2.5/6; exact sign flip on the 1/4
    lattice: 2 of 8 patterns as extreme -> p = 0.25. Lengths: +2 on all six -> p = 2/64.
    """
    root = tmp_path / "rec"
    base_tokens = [10, 20, 30, 40, 50, 60]
    cases = [("sum", 0, [1, 0, 0, 1, 0, 0], 0), ("sum", 1, [1, 0, 0, 1, 0, 0], 0),
             ("mean", 0, [1, 1, 1, 1, 0, 0], 2), ("mean", 1, [1, 1, 1, 1, 1, 0], 2)]
    for i, (norm, seed, correct, extra) in enumerate(cases):
        tokens = [t + extra for t in base_tokens]
        make_run(root, str(i), method="dpo", loss=dpo(0.1, norm), seed=seed, generations=gens(correct, tokens),
                 metrics={"val/answer_acc": sum(correct) / 6, "val/gen_len": sum(tokens) / 6, "train/loss": 0.5})
    return root


def test_intervals_from_per_question_records_and_paired_baseline(recorded, tmp_path):
    rep = report(recorded, tmp_path / "r", baseline="loss.normalize=sum", n_boot=2000)
    by = {r["loss.normalize"]: r for r in rep["rows"]}
    mean = by["mean"]
    assert mean["val/answer_acc_interval"] == "two_way_bootstrap" and mean["questions"] == 6
    assert mean["val/answer_acc_low"] <= 0.75 <= mean["val/answer_acc_high"]
    # train/loss has no per-question records: t over the seeds, both 0.5 -> zero width
    assert mean["train/loss_interval"] == "t_seeds"
    assert (mean["train/loss_low"], mean["train/loss_high"]) == pytest.approx((0.5, 0.5))
    (row,) = rep["compared"]
    d = row["diffs"]["val/answer_acc"]
    assert row["baseline_label"] == "loss.normalize=sum"
    assert d["diff"] == pytest.approx(2.5 / 6) and d["p_value"] == pytest.approx(0.25)
    assert d["test"] == "sign_flip_exact"
    assert row["diffs"]["val/gen_len"]["p_value"] == pytest.approx(1 / 32)
    assert row["diffs"]["train/loss"] == {"diff": 0.0, "p_value": None,
                                           "note": "not tested: no per-question records on both sides"}
    # Holm over the two tests: 1/32 * 2 = 1/16; 0.25 * 1 -> 0.25.
    assert row["diffs"]["val/gen_len"]["p_holm"] == pytest.approx(1 / 16) and d["p_holm"] == pytest.approx(0.25)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Paired differences to the baseline (loss.normalize=sum)" in md and "2 paired tests" in md
    assert f"+0.4167 [{d['low']:.4f}, {d['high']:.4f}], p = 0.25" in md and "bs |" in md
    diffs = read_csv(tmp_path / "r" / "diffs.csv")
    assert {r["metric"] for r in diffs} == {"val/answer_acc", "val/gen_len", "train/loss"}
    assert (tmp_path / "r" / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_without_records_and_bad_specs(sweep, tmp_path, capsys):
    rep = report(sweep, tmp_path / "r", baseline="loss.normalize=sum", n_boot=200)
    row = next(r for r in rep["compared"] if r["loss.beta"] == 0.1)
    # (0.1, mean) 0.25 vs its twin (0.1, sum) 0.4: no records, so the difference is shown untested
    assert row["diffs"]["val/answer_acc"]["diff"] == pytest.approx(-0.15)
    assert row["diffs"]["val/answer_acc"]["p_value"] is None
    assert "-0.15 (not tested)" in rep["diff_table"]
    assert main([str(sweep), "--out", str(tmp_path / "x"), "--baseline", "nope"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main([str(sweep), "--out", str(tmp_path / "x"), "--baseline", "loss.normalize=avg"]) == 2
    assert "no group has loss.normalize=avg" in capsys.readouterr().err
