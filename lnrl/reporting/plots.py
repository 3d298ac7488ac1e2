"""Plots with 95% intervals as error bars: accuracy against the swept loss settings, every group's
metrics, and length against margin (lnrl-report); every model's held-out metrics (results.png).
Written with matplotlib's Agg backend; a plot whose axis the runs lack (or do not vary) is skipped
with a note."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from lnrl.reporting.runs import ACC, field_value

MAX_GROUPS = 40  # more points than this on one axis are unreadable: the groups plot is skipped


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _yerr(values: Sequence, lows: Sequence, highs: Sequence) -> list[list[float]]:
    """Asymmetric error bars; 0 where a point has no interval (drawn hollow by the caller)."""
    lo = [v - l if _ok(v) and _ok(l) else 0.0 for v, l in zip(values, lows)]
    hi = [h - v if _ok(v) and _ok(h) else 0.0 for v, h in zip(values, highs)]
    return [lo, hi]


def interval_panel(ax, labels: Sequence[str], values: Sequence, lows: Sequence, highs: Sequence,
                   colors: Sequence[str] | None = None) -> None:
    """One point per label with its 95% interval; points without an interval are hollow."""
    colors = colors or ["C0"] * len(labels)
    xs = list(range(len(labels)))
    for x, v, l, h, c in zip(xs, values, lows, highs, colors):
        if not _ok(v):
            continue
        has = _ok(l) and _ok(h)
        ax.errorbar([x], [v], yerr=_yerr([v], [l], [h]) if has else None, fmt="o", color=c, capsize=4,
                    markerfacecolor=c if has else "white")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")


def _save(fig, ax, path: Path, legend: bool = True) -> None:
    plt = _plt()
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- lnrl-report ----------------------------------------------------------------------------------

def _varying(rows: Sequence[dict], fields: Sequence[str]) -> list[str]:
    return [f for f in fields if len({str(r.get(f)) for r in rows}) > 1]


def line_plot(rows: Sequence[dict], fields: Sequence[str], x: str, y: str, series: str, path: Path,
              log_x: bool = False) -> str | None:
    """Each group's `y` (mean over seeds, 95% interval) against its `x`, one line per `series` value
    (plus any other group field that varies, so no two groups share a point). Returns a note when skipped."""
    have = [r for r in rows if r.get(f"{y}_mean") is not None and r.get(x) is not None]
    xs_all = set()
    for r in have:
        try:
            xs_all.add(float(r[x]))
        except (TypeError, ValueError):
            pass
    if len(xs_all) < 2:
        return f"skipped {path.name}: the ok runs have {len(xs_all)} value(s) of {x} with {y} (need 2)"
    label_fields = [*series.split("+"), *(f for f in _varying(have, fields) if f != x and f not in series.split("+"))]
    lines: dict[str, list[dict]] = defaultdict(list)
    for r in have:
        try:
            float(r[x])
        except (TypeError, ValueError):
            continue
        lines[", ".join(f"{f}={r.get(f)}" for f in label_fields)].append(r)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda r: float(r[x]))
        xv = [float(r[x]) for r in pts]
        v = [r[f"{y}_mean"] for r in pts]
        ax.errorbar(xv, v, yerr=_yerr(v, [r.get(f"{y}_low") for r in pts], [r.get(f"{y}_high") for r in pts]),
                    marker="o", capsize=3, label=label)
    if log_x and min(xs_all) > 0:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted(xs_all))  # label the swept values themselves
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% interval)")
    return _save(fig, ax, path)


def scatter_plot(runs: Sequence[dict], x: str, y: str, series: str, path: Path) -> str | None:
    """One point per ok run, coloured by `series`. Returns a note when skipped."""
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        xv, yv = r["metrics"].get(x), r["metrics"].get(y)
        if r["status"] == "ok" and xv is not None and yv is not None:
            pts[", ".join(f"{s}={field_value(r, s)}" for s in series.split("+"))].append((xv, yv))
    if not pts:
        return f"skipped {path.name}: no ok run has both {x} and {y}"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, xy in sorted(pts.items()):
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], label=label, s=18)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return _save(fig, ax, path)


def groups_plot(rows: Sequence[dict], fields: Sequence[str], metrics: Sequence[str], path: Path) -> str | None:
    """One panel per metric, one point per group (mean over seeds, 95% interval)."""
    shown = [m for m in metrics if any(r.get(f"{m}_mean") is not None for r in rows)]
    if len(rows) < 2 or not shown:
        return f"skipped {path.name}: {len(rows)} group(s), {len(shown)} metric(s) with values (need 2 and 1)"
    if len(rows) > MAX_GROUPS:
        return f"skipped {path.name}: {len(rows)} groups (more than {MAX_GROUPS} points per panel)"
    vary = _varying(rows, fields) or list(fields[:1])
    labels = [", ".join(str(r.get(f)) for f in vary) for r in rows]
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown), figsize=(max(3.5, 0.35 * len(rows) + 1.5) * len(shown), 3.8),
                             squeeze=False)
    for ax, m in zip(axes[0], shown):
        interval_panel(ax, labels, [r.get(f"{m}_mean") for r in rows], [r.get(f"{m}_low") for r in rows],
                       [r.get(f"{m}_high") for r in rows])
        ax.set_title(m, fontsize=9)
    fig.suptitle(f"groups ({' / '.join(vary)}): mean over seeds, 95% interval; hollow = no interval", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def make_plots(runs: Sequence[dict], rows: Sequence[dict], fields: Sequence[str], metrics: Sequence[str], out: Path,
               acc: str = ACC) -> tuple[list[Path], list[str]]:
    plots = [
        ("acc_vs_beta.png", lambda p: line_plot(rows, fields, "loss.beta", acc, "loss.name+loss.normalize", p,
                                                log_x=True)),
        ("acc_vs_boundary.png", lambda p: line_plot(rows, fields, "loss.boundary", acc,
                                                    "loss.name+loss.constraint", p)),
        ("groups.png", lambda p: groups_plot(rows, fields, metrics, p)),
        ("len_vs_margin.png", lambda p: scatter_plot(runs, "rewards/margins", "val/gen_len", "method", p)),
    ]
    written, notes = [], []
    for name, draw in plots:
        note = draw(out / name)
        (notes.append(note) if note else written.append(out / name))
    return written, notes


# -- the main job ---------------------------------------------------------------------------------

def plot_results(results: Mapping, path: Path) -> None:
    """results.png: one panel per metric, one point per model with its 95% interval (the reference model
    grey, the baseline black, a dashed line at the baseline's value); hollow points have no interval."""
    from lnrl.reporting.compare import METRICS

    comp = results["comparison"]
    names = list(comp["models"])
    shown = [m for m in comp["metrics"]
             if any(_ok(comp["models"][n]["metrics"][m].get("value")) for n in names)]
    plt = _plt()
    cols = min(4, max(1, len(shown)))
    rows = -(-max(1, len(shown)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    colors = ["#888888" if n == comp.get("reference") else "black" if n == comp["baseline"] else "C0" for n in names]
    for ax, m in zip(axes.flat, shown):
        vals = [comp["models"][n]["metrics"][m] for n in names]
        interval_panel(ax, names, [v.get("value") for v in vals], [v.get("low") for v in vals],
                       [v.get("high") for v in vals], colors)
        base = comp["models"][comp["baseline"]]["metrics"][m].get("value")
        if _ok(base):
            ax.axhline(base, color="black", lw=0.8, ls="--", alpha=0.5)
        ax.set_title(METRICS[m].label if m in METRICS else m, fontsize=9)
        if m in METRICS and METRICS[m].proportion:
            ax.set_ylim(-0.03, 1.03)
    n = comp["models"][comp["baseline"]]["metrics"].get("answer_acc", {}).get("n_questions")
    data = f" on {results['data']}" if results.get("data") else ""
    fig.suptitle(f"{results.get('model')}{data} ({n} held-out questions): mean over seeds, 95% interval; "
                 "hollow = no interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
