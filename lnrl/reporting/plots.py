"""Plots: accuracy against the swept loss settings and length against margin (lnrl-report), and the
main job's bar chart of every model's held-out metrics (results.png). Written with matplotlib's Agg
backend; a plot whose axis the runs lack (or do not vary) is skipped with a note."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lnrl.reporting.runs import ACC, field_value, mean_std

def _points(runs: Sequence[dict], x: str, y: str, series: str) -> dict[str, dict[float, list[float]]]:
    """{series label: {x value: [y of each ok run]}} for ok runs having both x and y."""
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        xv = r["metrics"].get(x) if x in r["metrics"] else field_value(r, x)
        yv = r["metrics"].get(y)
        if r["status"] != "ok" or xv is None or yv is None:
            continue
        try:
            xv = float(xv)
        except (TypeError, ValueError):
            continue
        label = ", ".join(f"{s}={field_value(r, s)}" for s in series.split("+"))
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


def plot_results(results: dict, path: Path, metrics: Sequence[str]) -> None:
    """The main job's results.png: one bar chart per metric, one bar per model (base, VFT, the methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("base", results["base"]), *results["methods"].items()]
    names = [n for n, _ in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        values = [m[metric] if m[metric] is not None else 0.0 for _, m in rows]
        ax.bar(names, values, color=["#999999"] + ["C0"] * (len(names) - 1))
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
        if metric != "gen_len":
            ax.set_ylim(0, 1)
    fig.suptitle(f"{results['model']} on {results['data']} ({results['eval_examples']} held-out questions)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
