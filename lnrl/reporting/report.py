"""The lnrl-report document of every run under a directory (a sweep dir, an outputs dir, one run dir).

Writes, into the directory (or `out`): report.md (the grouped table, failed runs, every run, plots),
report.csv (grouped: <metric>_mean/<metric>_std columns), runs.csv (one row per run) and PNG plots:
accuracy vs beta per normalization, accuracy vs boundary per constraint, generation length vs reward
margin (lnrl.reporting.plots). Runs and their grouping: lnrl.reporting.runs. Offline; no wandb.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lnrl.reporting.plots import make_plots
from lnrl.reporting.runs import DEFAULT_METRICS, field_value, load_runs, summarize
from lnrl.reporting.tables import markdown_table, rel_path, runs_markdown, summary_markdown, write_csv
from lnrl.sweep import FAILED_FILE, METRICS_FILE


def report(root: str | Path, out: str | Path | None = None, metrics: Sequence[str] | None = None) -> dict:
    """Build the report of every run under `root`; write it into `out` (default `root`); return it."""
    root = Path(root)
    out = Path(out) if out else root
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"lnrl-report: no run directory (.hydra/config.yaml) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        present = {m for r in runs for m in r["metrics"]}
        metrics = [m for m in DEFAULT_METRICS if m in present]
    fields, rows = summarize(runs, metrics)
    plots, notes = make_plots(runs, out)
    failed = [r for r in runs if r["status"] != "ok"]

    table = summary_markdown(fields, rows, metrics)
    n_ok = len(runs) - len(failed)
    text = [f"# lnrl report: {root}", "",
            f"{len(runs)} runs: {n_ok} ok, {len(failed)} failed or incomplete. Mean ± std over seeds "
            "(sample std); n = ok seeds.", "", table, ""]
    if failed:
        text += ["## Failed or incomplete runs", "",
                 markdown_table(["status", "overrides", "error", "dir"],
                                [[r["status"], " ".join(r["overrides"]), r["error"] or f"no {METRICS_FILE} or "
                                  f"{FAILED_FILE}", rel_path(r["dir"], root)] for r in failed]), ""]
    text += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [f"- {n}" for n in notes]
    text += ["", "## Every run", "", runs_markdown(runs, fields, metrics, root), ""]
    (out / "report.md").write_text("\n".join(text))

    write_csv(out / "report.csv",
              [*fields, "n", "failed", "incomplete", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))],
              [[*(r[f] for f in fields), r["n"], r["failed"], r["incomplete"], r["seeds"],
                *(r[f"{m}_{s}"] for m in metrics for s in ("mean", "std"))] for r in rows])
    all_metrics = sorted({m for r in runs for m in r["metrics"]})
    write_csv(out / "runs.csv", ["dir", "status", *fields, "seed", "error", *all_metrics],
              [[r["dir"], r["status"], *(field_value(r, f) for f in fields), r["seed"], r["error"],
                *(r["metrics"].get(m) for m in all_metrics)] for r in runs])
    return {"runs": runs, "fields": fields, "rows": rows, "metrics": list(metrics), "plots": plots,
            "notes": notes, "table": table, "failed": failed}
