"""Tables: markdown and CSV of grouped runs (lnrl-report) and of the main job's results (results.md)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lnrl.reporting.runs import field_value

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


def rel_path(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path


def runs_markdown(runs: Sequence[dict], fields: Sequence[str], metrics: Sequence[str], root: Path) -> str:
    cols = _columns(fields, runs)
    headers = ["status", *cols, "seed", *metrics, "dir"]
    body = [[r["status"], *(field_value(r, c) for c in cols), r["seed"], *(r["metrics"].get(m) for m in metrics),
             rel_path(r["dir"], root)] for r in runs]
    return markdown_table(headers, body)


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows([["" if c is None else (",".join(map(str, c)) if isinstance(c, list) else c) for c in row]
                     for row in rows])


# -- the main job's results (results.md) ----------------------------------------------------------

def fmt_metric(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def results_table(results: dict) -> str:
    """One row per model (base, VFT, the alignment methods) of the main job's results.json."""
    rows = [("base", results["base"]), *results["methods"].items()]
    head = "| model | answer_acc | assessment_acc | gen_len | degenerate_rate | gold NLL |"
    lines = [head, "|" + "---|" * 6]
    for name, m in rows:
        gen_len = "n/a" if m["gen_len"] is None else f"{m['gen_len']:.1f}"
        lines.append(f"| {name} | {fmt_metric(m['answer_acc'])} | {fmt_metric(m['assessment_acc'])} | {gen_len} | "
                     f"{fmt_metric(m['degenerate_rate'])} | {fmt_metric(m['nll'])} |")
    return "\n".join(lines)
