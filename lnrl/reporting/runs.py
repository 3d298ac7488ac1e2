"""The runs under a directory: one flat row per lnrl-train run dir, grouped by everything but the seed.

A run dir is an lnrl-train run directory: one holding `.hydra/config.yaml` with a `method` (Hydra
saves it for every run and sweep point; lnrl-eval/lnrl-sample runs are left out). Its status is ok
(metrics.json), failed (failed.json) or incomplete (neither; see lnrl/sweep.py).
Runs are grouped by everything but the seed: method, the loss settings (name, beta, normalize,
constraint, boundary) and any other override that differs between runs (e.g. optim.lr). `summarize`
gives each group its final metrics as mean and std over its ok seeds (std is the sample standard
deviation, n - 1 in the denominator; None for one seed); lnrl.reporting.report adds the intervals.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from lnrl.sweep import METRICS_FILE, find_run_dirs, point_status

# Config fields that define a run's setting, in table order (dotted paths into .hydra/config.yaml).
SETTING_FIELDS = ("loss.name", "loss.beta", "loss.normalize", "loss.constraint", "loss.boundary")
# Metrics shown by default, in this order, when at least one run has them.
DEFAULT_METRICS = ("val/answer_acc", "val/nll", "val/gen_len", "val/assessment_acc", "val/degenerate_rate",
                   "val/loss", "rewards/margins", "rewards/accuracies", "train/loss")
ACC = "val/answer_acc"



def _method_name(run_dir: Path, cfg, metrics: dict) -> str | None:
    # The preset name (dpo_avg) says more than the class (DPOModule); fall back to the class.
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        choice = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.method")
        if choice:
            return str(choice)
    target = OmegaConf.select(cfg, "method._target_", default=None) or metrics.get("method")
    return str(target).rsplit(".", 1)[-1] if target else None


def _scalar(text: str) -> Any:
    # "0.5" -> 0.5, "1" -> 1, "sum" -> "sum", as in a config.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_override(o: str) -> tuple[str, str] | None:
    if "=" not in o:
        return None
    key, value = o.split("=", 1)
    return key.lstrip("+~"), value


def load_run(run_dir: str | Path) -> dict[str, Any] | None:
    """One flat row: dir, status, method, SETTING_FIELDS, seed, every numeric metric, error, overrides.
    None for a run of another command (lnrl-eval, lnrl-sample: no `method` in its config)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    # A point that died before Hydra wrote its config still has its overrides in failed.json.
    cfg = OmegaConf.load(cfg_path) if cfg_path.exists() else OmegaConf.create()
    if cfg_path.exists() and "method" not in cfg:
        return None
    status = point_status(run_dir)
    metrics: dict[str, Any] = {}
    if status["status"] == "ok":
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    row: dict[str, Any] = {"dir": str(run_dir), "status": status["status"],
                           "method": _method_name(run_dir, cfg, metrics)}
    given = dict(p for o in status["overrides"] if (p := _parse_override(o)))
    for field in (*SETTING_FIELDS, "seed"):
        row[field] = OmegaConf.select(cfg, field, default=None, throw_on_missing=False)
        if row[field] is None and field in given:
            row[field] = _scalar(given[field])
    row["overrides"] = status["overrides"]
    row["error"] = status.get("error")
    row["metrics"] = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return row


def load_runs(root: str | Path) -> list[dict[str, Any]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"lnrl-report: {root} is not a directory")
    return [r for d in find_run_dirs(root) if (r := load_run(d)) is not None]


def _overrides(run: dict) -> dict[str, str]:
    return dict(p for o in run["overrides"] if (p := _parse_override(o)))


def extra_keys(runs: Sequence[dict]) -> list[str]:
    """Override keys, other than seed and the fixed columns, whose value differs between runs."""
    fixed = {"seed", "method", *SETTING_FIELDS}
    parsed = [_overrides(r) for r in runs]
    keys = set().union(*parsed) - fixed
    return sorted(k for k in keys if len({d.get(k) for d in parsed}) > 1)


def group_key_fields(runs: Sequence[dict]) -> list[str]:
    return ["method", *SETTING_FIELDS, *extra_keys(runs)]


def field_value(run: dict, field: str) -> Any:
    if field in run:
        return run[field]
    return _overrides(run).get(field)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _sort_key(v: str) -> tuple:
    # None last; numbers by value (0.05 < 0.1 < 10); other strings alphabetically.
    try:
        return (v == "None", 0, float(v), "")
    except ValueError:
        return (v == "None", 1, 0.0, v)


def summarize(runs: Sequence[dict], metrics: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Group runs by everything but the seed: (key fields, one summary row per group)."""
    fields = group_key_fields(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[tuple(str(field_value(r, f)) for f in fields)].append(r)
    rows = []
    for key in sorted(groups, key=lambda k: [_sort_key(v) for v in k]):
        members = groups[key]
        ok = [r for r in members if r["status"] == "ok"]
        row = {f: field_value(members[0], f) for f in fields}
        row["n"] = len(ok)
        row["failed"] = sum(r["status"] == "failed" for r in members)
        row["incomplete"] = sum(r["status"] == "incomplete" for r in members)
        row["seeds"] = sorted((r["seed"] for r in ok), key=str)
        row["members"] = ok  # the ok runs, for intervals from their per-question records (lnrl.reporting.report)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std([r["metrics"][m] for r in ok if m in r["metrics"]])
        rows.append(row)
    return fields, rows
