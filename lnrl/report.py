"""lnrl-report: one results table and plots for every run under a sweep (or outputs) directory.

    lnrl-report outputs/train/multiruns/2025-01-01_12-00-00     # one sweep
    lnrl-report outputs                                          # every run ever made
    lnrl-report <dir> --out <report dir> --metrics val/answer_acc val/nll

A run dir is an lnrl-train run directory: one holding `.hydra/config.yaml` with a `method` (Hydra
saves it for every run and sweep point; lnrl-eval/lnrl-sample runs are left out). Its status is ok
(metrics.json), failed (failed.json) or incomplete (neither; see lnrl/sweep.py).
Runs are grouped by everything but the seed: method, the loss settings (name, beta, normalize,
constraint, boundary) and any other override that differs between runs (e.g. optim.lr). Each group
shows its final metrics as mean ± std over its ok seeds (std is the sample standard deviation,
n - 1 in the denominator; blank for one seed).

Writes, into the directory (or --out): report.md (the grouped table, failed runs, every run, plots),
report.csv (grouped: <metric>_mean/<metric>_std columns), runs.csv (one row per run) and PNG plots:
accuracy vs beta per normalization, accuracy vs boundary per constraint, generation length vs reward
margin. A plot whose axis the runs lack (or do not vary) is skipped with a note. Offline; no wandb.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from lnrl.sweep import FAILED_FILE, METRICS_FILE, find_run_dirs, point_status

# Config fields that define a run's setting, in table order (dotted paths into .hydra/config.yaml).
SETTING_FIELDS = ("loss.name", "loss.beta", "loss.normalize", "loss.constraint", "loss.boundary")
# Metrics shown by default, in this order, when at least one run has them.
DEFAULT_METRICS = ("val/answer_acc", "val/nll", "val/gen_len", "val/assessment_acc", "val/degenerate_rate",
                   "val/loss", "rewards/margins", "rewards/accuracies", "train/loss")
ACC = "val/answer_acc"


# -- loading ------------------------------------------------------------------------------------

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


# -- grouping ----------------------------------------------------------------------------------

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


def _field(run: dict, field: str) -> Any:
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
        groups[tuple(str(_field(r, f)) for f in fields)].append(r)
    rows = []
    for key in sorted(groups, key=lambda k: [_sort_key(v) for v in k]):
        members = groups[key]
        ok = [r for r in members if r["status"] == "ok"]
        row = {f: _field(members[0], f) for f in fields}
        row["n"] = len(ok)
        row["failed"] = sum(r["status"] == "failed" for r in members)
        row["incomplete"] = sum(r["status"] == "incomplete" for r in members)
        row["seeds"] = sorted((r["seed"] for r in ok), key=str)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std([r["metrics"][m] for r in ok if m in r["metrics"]])
        rows.append(row)
    return fields, rows


# -- formatting ---------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    esc = [[_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def _columns(fields: Sequence[str], rows: Sequence[dict]) -> list[str]:
    # Drop setting columns that are empty for every group (e.g. loss.beta in an AFT-only sweep).
    return [f for f in fields if any(r.get(f) is not None for r in rows)]


def summary_markdown(fields: Sequence[str], rows: Sequence[dict], metrics: Sequence[str]) -> str:
    cols = _columns(fields, rows)
    headers = [*cols, "n", "failed", *metrics]
    body = [[*(r[c] for c in cols), r["n"], r["failed"] + r["incomplete"],
             *(fmt_mean_std(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics)] for r in rows]
    return markdown_table(headers, body)


def _rel(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path


def runs_markdown(runs: Sequence[dict], fields: Sequence[str], metrics: Sequence[str], root: Path) -> str:
    cols = _columns(fields, runs)
    headers = ["status", *cols, "seed", *metrics, "dir"]
    body = [[r["status"], *(_field(r, c) for c in cols), r["seed"], *(r["metrics"].get(m) for m in metrics),
             _rel(r["dir"], root)] for r in runs]
    return markdown_table(headers, body)


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows([["" if c is None else (",".join(map(str, c)) if isinstance(c, list) else c) for c in row]
                     for row in rows])


# -- plots --------------------------------------------------------------------------------------

def _points(runs: Sequence[dict], x: str, y: str, series: str) -> dict[str, dict[float, list[float]]]:
    """{series label: {x value: [y of each ok run]}} for ok runs having both x and y."""
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        xv = r["metrics"].get(x) if x in r["metrics"] else _field(r, x)
        yv = r["metrics"].get(y)
        if r["status"] != "ok" or xv is None or yv is None:
            continue
        try:
            xv = float(xv)
        except (TypeError, ValueError):
            continue
        label = ", ".join(f"{s}={_field(r, s)}" for s in series.split("+"))
        out[label][xv].append(yv)
    return out


def line_plot(runs: Sequence[dict], x: str, y: str, series: str, path: Path, log_x: bool = False) -> str | None:
    """Mean ± std of `y` against `x`, one line per `series` value. Returns a note when skipped."""
    pts = _points(runs, x, y, series)
    xs = {xv for s in pts.values() for xv in s}
    if len(xs) < 2:
        return f"skipped {path.name}: the ok runs have {len(xs)} value(s) of {x} with {y} (need 2)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, by_x in sorted(pts.items()):
        xv = sorted(by_x)
        stats = [mean_std(by_x[v]) for v in xv]
        ax.errorbar(xv, [m for m, _ in stats], yerr=[s or 0.0 for _, s in stats], marker="o", capsize=3,
                    label=label)
    if log_x and min(xs) > 0:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted(xs))  # label the swept values themselves
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean ± std over seeds)")
    return _save(fig, ax, path)


def _save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scatter_plot(runs: Sequence[dict], x: str, y: str, series: str, path: Path) -> str | None:
    """One point per ok run, coloured by `series`. Returns a note when skipped."""
    pts = _points(runs, x, y, series)
    if not pts:
        return f"skipped {path.name}: no ok run has both {x} and {y}"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, by_x in sorted(pts.items()):
        xs = [xv for xv, ys in by_x.items() for _ in ys]
        ys = [yv for ys in by_x.values() for yv in ys]
        ax.scatter(xs, ys, label=label, s=18)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return _save(fig, ax, path)


def make_plots(runs: Sequence[dict], out: Path, acc: str = ACC) -> tuple[list[Path], list[str]]:
    plots = [
        ("acc_vs_beta.png", lambda p: line_plot(runs, "loss.beta", acc, "loss.name+loss.normalize", p, log_x=True)),
        ("acc_vs_boundary.png", lambda p: line_plot(runs, "loss.boundary", acc, "loss.name+loss.constraint", p)),
        ("len_vs_margin.png", lambda p: scatter_plot(runs, "rewards/margins", "val/gen_len", "method", p)),
    ]
    written, notes = [], []
    for name, draw in plots:
        note = draw(out / name)
        (notes.append(note) if note else written.append(out / name))
    return written, notes


# -- the command --------------------------------------------------------------------------------

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
                                  f"{FAILED_FILE}", _rel(r["dir"], root)] for r in failed]), ""]
    text += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [f"- {n}" for n in notes]
    text += ["", "## Every run", "", runs_markdown(runs, fields, metrics, root), ""]
    (out / "report.md").write_text("\n".join(text))

    write_csv(out / "report.csv",
              [*fields, "n", "failed", "incomplete", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))],
              [[*(r[f] for f in fields), r["n"], r["failed"], r["incomplete"], r["seeds"],
                *(r[f"{m}_{s}"] for m in metrics for s in ("mean", "std"))] for r in rows])
    all_metrics = sorted({m for r in runs for m in r["metrics"]})
    write_csv(out / "runs.csv", ["dir", "status", *fields, "seed", "error", *all_metrics],
              [[r["dir"], r["status"], *(_field(r, f) for f in fields), r["seed"], r["error"],
                *(r["metrics"].get(m) for m in all_metrics)] for r in runs])
    return {"runs": runs, "fields": fields, "rows": rows, "metrics": list(metrics), "plots": plots,
            "notes": notes, "table": table, "failed": failed}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lnrl-report", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a sweep dir, an outputs dir, or a single run dir")
    p.add_argument("--out", help="where to write report.md/report.csv/runs.csv/plots (default: root)")
    p.add_argument("--metrics", nargs="+", help=f"metric columns (default: those of {', '.join(DEFAULT_METRICS)} "
                                                 "that some run has)")
    args = p.parse_args(argv)
    try:
        rep = report(args.root, args.out, args.metrics)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    out = Path(args.out or args.root)
    print(rep["table"])
    for r in rep["failed"]:
        print(f"{r['status'].upper()}: {' '.join(r['overrides'])}: {r['error'] or 'no metrics.json'} ({r['dir']})")
    for n in rep["notes"]:
        print(n)
    print(f"report: {out / 'report.md'}, {out / 'report.csv'}, {out / 'runs.csv'}; "
          f"plots: {', '.join(p.name for p in rep['plots']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
