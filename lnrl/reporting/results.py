"""The main job's results (lnrl.apps.pipeline): every model's held-out metrics from `<out>/eval/*/`,
with the run's sizes and stage times, as results.json, results.md and results.png."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lnrl.reporting.plots import plot_results
from lnrl.reporting.tables import fmt_metric, results_table
from lnrl.utils import write_json

METRICS = ("answer_acc", "assessment_acc", "gen_len", "degenerate_rate")  # the table's and plot's metrics


def _dig(node: Any, path: Sequence[str]) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, Mapping) else None
    return node


def _finite(x: Any) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. no assessment pairs) is null."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


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


def collect_results(out: Path, names: Sequence[str], *, timings: Mapping[str, float], sizes: Mapping[str, Any],
                    wall: float) -> dict:
    """results.json's content from the stage directories under `out`; `names`: the trained models."""
    def metrics(name: str) -> dict:
        return json.loads((out / "eval" / name / "metrics.json").read_text())

    def pick(m: dict) -> dict:
        return {k: _finite(m.get(f"val/{k}")) for k in (*METRICS, "nll", "truncated_rate")} | {
            "assessment_pairs": m.get("val/assessment_pairs")}

    base, vft = metrics("base"), metrics("vft")
    split = json.loads((out / "vft" / "data_split.json").read_text())
    vft_run = json.loads((out / "vft" / "metrics.json").read_text())
    prefs = json.loads((out / "prefs" / "stats.json").read_text())
    sample_stats = json.loads((out / "sample" / "stats.json").read_text())
    return {
        "model": base.get("model"),
        "data": split["split"].get("source"),
        "train_examples": split["split"].get("n_train"),
        "eval_examples": int(base.get("val/n_examples", 0)),
        "val_nll_before": _finite(base.get("val/nll")),
        "val_nll_after": _finite(vft.get("val/nll")),
        "answer_acc_before": _finite(base.get("val/answer_acc")),
        "answer_acc_after": _finite(vft.get("val/answer_acc")),
        "seconds": round(sum(timings.values()), 1),
        "seconds_this_run": round(wall, 1),
        "stage_seconds": dict(timings),
        "sizes": {**sizes, "vft_steps": vft_run.get("global_step"),
                  "sampled_completions": sample_stats.get("completions"),
                  "sample_correct_rate": sample_stats.get("correct_rate"),
                  "pairs": {rule: s.get("pairs") for rule, s in prefs.get("pairs", {}).items()}},
        "base": pick(base),
        "methods": {name: pick(metrics(name)) for name in names},
    }


def write_results(out: Path, results: dict) -> str:
    """Write results.json, results.md and results.png into `out`; return the markdown table."""
    write_json(out / "results.json", results)
    table = results_table(results)
    (out / "results.md").write_text(
        f"# lnrl demo: {results['model']} on {results['data']}\n\n{table}\n\n"
        f"VFT: held-out gold NLL {fmt_metric(results['val_nll_before'])} -> {fmt_metric(results['val_nll_after'])}, "
        f"answer accuracy {fmt_metric(results['answer_acc_before'])} -> {fmt_metric(results['answer_acc_after'])} "
        f"({results['train_examples']} training / {results['eval_examples']} held-out questions).\n"
        f"Total stage time {results['seconds']:.0f} s. Sizes: `{json.dumps(results['sizes'])}`\n")
    plot_results(results, out / "results.png", METRICS)
    return table
