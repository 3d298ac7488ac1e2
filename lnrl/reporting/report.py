"""The lnrl-report document of every run under a directory (a sweep dir, an outputs dir, one run dir).

Writes, into the directory (or `out`): report.md (the grouped table with 95% intervals, the paired
differences to a baseline group when one is given, failed runs, plots, every run), report.csv
(grouped: <metric>_mean/_std/_low/_high/_interval columns), diffs.csv (with a baseline), runs.csv
(one row per run) and PNG plots (lnrl.reporting.plots). Runs and their grouping over seeds:
lnrl.reporting.runs. Offline; no wandb.

Intervals, per group and metric: from the runs' per-question records (generations.jsonl etc.,
written when eval is on) through lnrl.reporting.compare, i.e. a bootstrap over questions for one
seed and a two-way bootstrap over seeds x questions for several (`bs` in the table); without
records a t interval over the seed means (`t`, lnrl.stats.seed_ci; none for one seed).
Differences to the baseline group (`baseline="method=vft"`) pair questions by id and come with a
p-value; the baseline of a group is the baseline group that agrees with it on every other field,
else the only baseline group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lnrl.reporting.compare import BY_KEY, diff_metric, summarize_metric
from lnrl.reporting.plots import make_plots
from lnrl.reporting.records import RunRecords, load_records
from lnrl.reporting.runs import DEFAULT_METRICS, field_value, load_runs, summarize
from lnrl.reporting.tables import (TWO_WAY_MARK, diffs_markdown, markdown_table, rel_path, runs_markdown,
                                   summary_markdown, write_csv)
from lnrl.stats import holm, seed_ci
from lnrl.sweep import FAILED_FILE, METRICS_FILE


def _seed_labels(members: Sequence[dict]) -> list[str]:
    """str(seed), made unique (a seed run twice in one group counts twice: '0', '0#2')."""
    seen: dict[str, int] = {}
    out = []
    for r in members:
        s = str(r["seed"])
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}#{seen[s]}")
    return out


def _group_records(row: dict, notes: list[str]) -> dict[str, RunRecords]:
    recs = {}
    for label, r in zip(_seed_labels(row["members"]), row["members"]):
        try:
            recs[label] = load_records(r["dir"])
        except (OSError, ValueError) as e:
            notes.append(f"{r['dir']}: per-question records unreadable ({e})")
            return {}
    return recs


def _label(row: dict, fields: Sequence[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in fields if row.get(f) is not None)


def add_intervals(rows: list[dict], fields: Sequence[str], metrics: Sequence[str], notes: list[str], *,
                  n_boot: int = 10_000, seed: int = 0) -> None:
    """Per group and metric: <m>_low, <m>_high, <m>_interval and the group's questions (module docstring)."""
    for row in rows:
        row["_records"] = _group_records(row, notes) if row["members"] else {}
        row["questions"] = None
        for m in metrics:
            row[f"{m}_low"] = row[f"{m}_high"] = row[f"{m}_interval"] = None
            metric = BY_KEY.get(m)
            if metric is not None and row["_records"]:
                try:
                    v = summarize_metric(_label(row, fields), row["_records"], metric, n_boot=n_boot, seed=seed)
                except ValueError as e:
                    notes.append(f"{_label(row, fields)}: {m}: {e}; t interval over seeds instead")
                    v = None
                if v is not None and v.source == "records" and v.low is not None:
                    row[f"{m}_low"], row[f"{m}_high"], row[f"{m}_interval"] = v.low, v.high, v.interval
                    if metric.name == "answer_acc" or row["questions"] is None and metric.kind == "generations":
                        row["questions"] = v.n_questions
                    if row[f"{m}_mean"] is not None and not math.isclose(v.value, row[f"{m}_mean"], rel_tol=1e-6,
                                                                          abs_tol=1e-9):
                        notes.append(f"{_label(row, fields)}: {m}: metrics.json mean {row[f'{m}_mean']:.6g} differs "
                                     f"from the per-question records' {v.value:.6g}")
                    continue
            values = [r["metrics"][m] for r in row["members"] if m in r["metrics"]]
            ci = seed_ci({i: [v] for i, v in enumerate(values)}) if len(values) > 1 else None  # a seed = one value
            if ci is not None:
                row[f"{m}_low"], row[f"{m}_high"], row[f"{m}_interval"] = ci.low, ci.high, ci.method


def parse_baseline(spec: str, fields: Sequence[str]) -> tuple[str, str]:
    if "=" not in spec:
        raise ValueError(f"--baseline {spec!r}: expected key=value, e.g. method=vft or loss.normalize=sum")
    key, value = spec.split("=", 1)
    if key not in fields:
        raise ValueError(f"--baseline {spec!r}: {key!r} is not a grouping field here; the fields are {list(fields)}")
    return key, value


def add_diffs(rows: list[dict], fields: Sequence[str], metrics: Sequence[str], baseline: str, notes: list[str], *,
              n_boot: int = 10_000, seed: int = 0) -> list[dict]:
    """Each non-baseline group's paired differences to its baseline group; returns the compared rows."""
    key, value = parse_baseline(baseline, fields)
    bases = [r for r in rows if str(r.get(key)) == value]
    if not bases:
        raise ValueError(f"--baseline {baseline}: no group has {key}={value}; values: "
                         f"{sorted({str(r.get(key)) for r in rows})}")
    compared = []
    for row in rows:
        if any(row is b for b in bases):
            continue
        twins = [b for b in bases if all(str(b.get(f)) == str(row.get(f)) for f in fields if f != key)]
        base = twins[0] if len(twins) == 1 else bases[0] if len(bases) == 1 else None
        if base is None:
            notes.append(f"{_label(row, fields)}: no single baseline group with {key}={value} (the candidates "
                         "differ from it in more than that field)")
            continue
        row["baseline_label"] = _label(base, [f for f in fields if str(base.get(f)) != str(row.get(f))])
        row["diffs"] = {}
        for m in metrics:
            metric = BY_KEY.get(m)
            d = None
            if metric is not None and row["_records"] and base["_records"]:
                try:
                    d = diff_metric(row["baseline_label"], base["_records"], _label(row, fields), row["_records"],
                                    metric, n_boot=n_boot, seed=seed)
                except ValueError as e:
                    notes.append(f"{_label(row, fields)} vs {row['baseline_label']}: {m}: not paired: {e}")
            if d is not None and d.p_value is not None:
                row["diffs"][m] = d.as_dict()
            elif row[f"{m}_mean"] is not None and base[f"{m}_mean"] is not None:
                row["diffs"][m] = {"diff": row[f"{m}_mean"] - base[f"{m}_mean"], "p_value": None,
                                   "note": "not tested: no per-question records on both sides"}
        compared.append(row)
    tested = [(r, m) for r in compared for m, d in r["diffs"].items() if d.get("p_value") is not None]
    for (r, m), p in zip(tested, holm([r["diffs"][m]["p_value"] for r, m in tested]) if tested else []):
        r["diffs"][m]["p_holm"] = p
    return compared


def report(root: str | Path, out: str | Path | None = None, metrics: Sequence[str] | None = None, *,
           baseline: str | None = None, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Build the report of every run under `root`; write it into `out` (default `root`); return it.

    `baseline`: `key=value` selecting the baseline group(s) of the paired differences (module docstring).
    """
    root = Path(root)
    out = Path(out) if out else root
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"lnrl-report: no run directory (.hydra/config.yaml) under {root}")
    if metrics is None:
        present = {m for r in runs for m in r["metrics"]}
        metrics = [m for m in DEFAULT_METRICS if m in present]
    fields, rows = summarize(runs, metrics)
    if baseline is not None:
        parse_baseline(baseline, fields)  # a bad spec fails before any work
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    add_intervals(rows, fields, metrics, notes, n_boot=n_boot, seed=seed)
    compared = add_diffs(rows, fields, metrics, baseline, notes, n_boot=n_boot, seed=seed) if baseline else []
    plots, plot_notes = make_plots(runs, rows, fields, metrics, out)
    failed = [r for r in runs if r["status"] != "ok"]

    table = summary_markdown(fields, rows, metrics)
    n_ok = len(runs) - len(failed)
    text = [f"# lnrl report: {root}", "",
            f"{len(runs)} runs: {n_ok} ok, {len(failed)} failed or incomplete. Each cell: mean over the group's ok "
            "seeds [95% interval]; `bs` = bootstrap from the runs' per-question records (over questions for one "
            "seed, over seeds x questions for several), `t` = t interval over the seed means (no per-question "
            "records); no interval = one seed without records. n = ok seeds, q = held-out questions behind the "
            "bootstrap intervals. Std over seeds: report.csv.", "", table, ""]
    diff_table = diffs_markdown(fields, compared, metrics) if baseline else None
    if baseline:
        n_tests = sum(d.get("p_value") is not None for r in compared for d in r["diffs"].values())
        text += [f"## Paired differences to the baseline ({baseline})", "",
                 "Each cell: group minus its baseline group on the same questions (paired by id), "
                 "`+d [95% interval], p`. "
                 f"{n_tests} paired tests; p-values are per comparison"
                 + (f" (Holm-adjusted over the {n_tests}: p_holm in diffs.csv)" if n_tests > 1 else "") + ". "
                 f"{TWO_WAY_MARK}: the paired interval excludes 0 but the one with seeds resampled too does not "
                 "(not stable across seeds).",
                 "", diff_table, ""]
    if failed:
        text += ["## Failed or incomplete runs", "",
                 markdown_table(["status", "overrides", "error", "dir"],
                                [[r["status"], " ".join(r["overrides"]), r["error"] or f"no {METRICS_FILE} or "
                                  f"{FAILED_FILE}", rel_path(r["dir"], root)] for r in failed]), ""]
    if notes:
        text += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    text += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [f"- {n}" for n in plot_notes]
    text += ["", "## Every run", "", runs_markdown(runs, fields, metrics, root), ""]
    (out / "report.md").write_text("\n".join(text))

    stats = ("mean", "std", "low", "high", "interval")
    write_csv(out / "report.csv",
              [*fields, "n", "failed", "incomplete", "seeds", "questions",
               *(f"{m}_{s}" for m in metrics for s in stats)],
              [[*(r[f] for f in fields), r["n"], r["failed"], r["incomplete"], r["seeds"], r["questions"],
                *(r[f"{m}_{s}"] for m in metrics for s in stats)] for r in rows])
    if baseline:
        cols = ("diff", "low", "high", "p_value", "p_holm", "test", "n_questions", "two_way_low", "two_way_high",
                "note")
        write_csv(out / "diffs.csv", [*fields, "baseline", "metric", *cols],
                  [[*(r[f] for f in fields), r["baseline_label"], m, *(d.get(c) for c in cols)]
                   for r in compared for m, d in r["diffs"].items()])
    all_metrics = sorted({m for r in runs for m in r["metrics"]})
    write_csv(out / "runs.csv", ["dir", "status", *fields, "seed", "error", *all_metrics],
              [[r["dir"], r["status"], *(field_value(r, f) for f in fields), r["seed"], r["error"],
                *(r["metrics"].get(m) for m in all_metrics)] for r in runs])
    for r in rows:
        r.pop("_records", None)
    return {"runs": runs, "fields": fields, "rows": rows, "metrics": list(metrics), "plots": plots,
            "notes": plot_notes, "record_notes": notes, "table": table, "diff_table": diff_table, "failed": failed,
            "compared": compared}
