"""The main job's results (lnrl.apps.pipeline): results.json, results.md, results.png.

What the pipeline calls (two steps, so a caller can print or extend the dict in between)::

    results = collect_results(
        out,                                   # the pipeline's out_dir
        {"base": {0: out / "eval/base"},       # {model: {seed: eval dir}}; one seed is fine
         "vft": {0: out / "eval/vft/seed_0", 1: out / "eval/vft/seed_1"},
         "aft": {0: ..., 1: ...}, ...},
        timings=..., sizes=run_sizes(sections, cfg), wall=...,
        baseline="vft", reference="base",      # differences are to `baseline`; the step is reference -> baseline
        setting={"seeds": [...], ...},         # what the run chose (stated in results.md, kept in results.json)
        info_dirs={"vft": out / "seed1/vft", "sample": out / "seed1/sample", "prefs": out / "seed1/prefs"},
        n_boot=10_000, seed=0)                 # bootstrap resamples and their seed (reproducible tables)
    table = write_results(out, results)        # writes the three files; returns the markdown tables

The old shape, `collect_results(out, ["vft", *methods], timings=..., sizes=..., wall=...)`, still
works: it reads `<out>/eval/base` and `<out>/eval/<name>` as one seed each (seed label "single").
`info_dirs` are the stage dirs the run's sizes are read from (data_split.json, metrics.json,
stats.json); by default `<out>/<stage>`, else `<out>/seed<s>/<stage>` for the baseline's first
seed s; a missing file leaves its field None.

results.json holds, besides the run's sizes and stage times:

- `comparison` (lnrl.reporting.compare.Comparison.as_dict): per model its seeds and, per metric,
  value, 95% interval (low, high, interval method), n_questions / n_pairs / n_seeds, per-seed
  values, source (records | metrics.json); `vs_baseline` per metric: diff, its interval, p_value,
  p_holm, test, sizes; `step`: baseline - reference, the same fields;
- `base` / `methods`: the flat values (mean over seeds) of the reference and of every other model,
  for a quick read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lnrl.reporting.compare import DEFAULT_METRICS, compare
from lnrl.reporting.plots import plot_results
from lnrl.reporting.tables import results_markdown, results_table
from lnrl.utils import write_json

METRICS = DEFAULT_METRICS  # the table's and plot's metrics (lnrl.reporting.compare.METRICS)


def _dig(node: Any, path: Sequence[str]) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, Mapping) else None
    return node


def _finite(x: Any) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. no assessment pairs) is null."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_sizes(sections: Mapping[str, Any], cfg: DictConfig) -> dict:
    """The knobs that set the cost and the effect, as the stages used them (from the stage sections)."""
    pick = lambda sec, *path: _dig(sections.get(sec, {}), path)  # noqa: E731
    return {
        "vft_max_steps": pick("vft", "trainer", "max_steps"), "vft_lr": pick("vft", "optim", "lr"),
        "align_max_steps": pick("align", "trainer", "max_steps"), "align_lr": pick("align", "optim", "lr"),
        "batch_size": OmegaConf.select(cfg, "data.batch_size"),
        "n_train": OmegaConf.select(cfg, "data.source.n_train"),
        "n_eval": OmegaConf.select(cfg, "data.source.n_eval"),
        "sample_questions": pick("sample", "n_questions"), "sample_k": pick("sample", "k"),
        "candidate_questions": pick("candidates", "n_questions"), "candidate_k": pick("candidates", "k"),
        "sample_max_new_tokens": pick("sample", "max_new_tokens"),
        "eval_max_new_tokens": OmegaConf.select(cfg, "eval.max_new_tokens"),
    }


def _eval_dirs(out: Path, eval_dirs: Mapping[str, Mapping[Any, str | Path]] | Sequence[str],
               reference: str | None) -> dict[str, dict[Any, Path]]:
    if isinstance(eval_dirs, Mapping):
        return {n: {s: Path(d) for s, d in seeds.items()} for n, seeds in eval_dirs.items()}
    names = [n for n in ([reference] if reference else []) + list(eval_dirs)]
    return {n: {"single": out / "eval" / n} for n in dict.fromkeys(names)}


def collect_results(out: Path, eval_dirs: Mapping[str, Mapping[Any, str | Path]] | Sequence[str], *,
                    timings: Mapping[str, float], sizes: Mapping[str, Any], wall: float, baseline: str = "vft",
                    reference: str | None = "base", setting: Mapping[str, Any] | None = None,
                    info_dirs: Mapping[str, str | Path] | None = None, metrics: Sequence[str] = METRICS,
                    n_boot: int = 10_000, seed: int = 0, contrasts: Sequence[Sequence[str]] = ()) -> dict:
    """results.json's content (module docstring): the comparison of every model plus the run's sizes."""
    out = Path(out)
    dirs = _eval_dirs(out, eval_dirs, reference)
    comp = compare(dirs, baseline=baseline, reference=reference, metrics=metrics, n_boot=n_boot, seed=seed,
                   contrasts=contrasts).as_dict()
    first_seed = next(iter(dirs[baseline]))

    def default_dir(stage: str) -> Path:
        flat = out / stage
        return flat if flat.exists() else out / f"seed{first_seed}" / stage

    info = {k: default_dir(k) for k in ("vft", "sample", "prefs")} | {k: Path(v) for k, v in (info_dirs or {}).items()}
    split = _read(info["vft"] / "data_split.json").get("split", {})
    vft_run, prefs = _read(info["vft"] / "metrics.json"), _read(info["prefs"] / "stats.json")
    sample_stats = _read(info["sample"] / "stats.json")
    ref = comp["reference"]
    first = _read(next(iter(dirs[ref or baseline].values())) / "metrics.json")

    def flat(name: str) -> dict:
        per = comp["models"][name]["metrics"]
        return {m: _finite(v["value"]) for m, v in per.items()} | {
            "assessment_pairs": per.get("assessment_acc", {}).get("n_pairs")}

    def value(name: str | None, metric: str) -> float | None:
        return _finite(comp["models"][name]["metrics"].get(metric, {}).get("value")) if name else None

    acc = comp["models"][baseline]["metrics"].get("answer_acc", {})
    return {
        "model": first.get("model"),
        "data": split.get("source"),
        "train_examples": split.get("n_train"),
        "eval_examples": acc.get("n_questions") or _finite(first.get("val/n_examples")),
        "val_nll_before": value(ref, "nll"),
        "val_nll_after": value(baseline, "nll"),
        "answer_acc_before": value(ref, "answer_acc"),
        "answer_acc_after": value(baseline, "answer_acc"),
        "seconds": round(sum(timings.values()), 1),
        "seconds_this_run": round(wall, 1),
        "stage_seconds": dict(timings),
        "setting": dict(setting or {}),
        "sizes": {**sizes, "vft_steps": vft_run.get("global_step"),
                  "sampled_completions": sample_stats.get("completions"),
                  "sample_correct_rate": sample_stats.get("correct_rate"),
                  "pairs": {rule: s.get("pairs") for rule, s in prefs.get("pairs", {}).items()}},
        "base": flat(ref) if ref else None,
        "methods": {name: flat(name) for name in comp["models"] if name != ref},
        "comparison": comp,
    }


def write_results(out: Path, results: dict) -> str:
    """Write results.json, results.md and results.png into `out`; return the markdown tables."""
    out = Path(out)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    plot_results(results, out / "results.png")
    return results_table(results)
