"""Tables: markdown and CSV of grouped runs (lnrl-report) and of the main job's results (results.md).

Every metric cell is `value [low, high]` (the 95% interval) and every difference cell
`+d [low, high], p = ...` (lnrl.stats.format_p), with the sizes and the reading next to them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnrl.models.embedded import CACHE_NAME, EMBEDDED_NOTE
from lnrl.reporting.compare import METRICS
from lnrl.reporting.runs import field_value
from lnrl.stats import format_p


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    esc = [[_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows([["" if c is None else (",".join(map(str, c)) if isinstance(c, list) else c) for c in row]
                     for row in rows])


def rel_path(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path


# -- cells ------------------------------------------------------------------------------------

TWO_WAY_MARK = "‡"  # the paired interval excludes 0 but the one with seeds resampled too does not


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def num(x: float | None, digits: int = 3, sign: str = "") -> str:
    """Fixed digits; a value that rounds to zero prints as 0, never -0.000; None is n/a."""
    if not _ok(x):
        return "n/a"
    return f"{(x if round(x, digits) != 0 else 0.0):{sign}.{digits}f}"


def value_cell(v: Mapping[str, Any], digits: int = 3) -> str:
    """`0.312 [0.268, 0.358]`; `0.312 (no CI)` for a metrics.json-only value; `n/a` when unmeasured."""
    if not _ok(v.get("value")):
        return "n/a"
    if not (_ok(v.get("low")) and _ok(v.get("high"))):
        return f"{num(v['value'], digits)} (no CI)"
    return f"{num(v['value'], digits)} [{num(v['low'], digits)}, {num(v['high'], digits)}]"


def unstable_across_seeds(d: Mapping[str, Any]) -> bool:
    lo, hi, tlo, thi = d.get("low"), d.get("high"), d.get("two_way_low"), d.get("two_way_high")
    return all(map(_ok, (lo, hi, tlo, thi))) and (lo > 0 or hi < 0) and tlo <= 0 <= thi


def diff_cell(d: Mapping[str, Any], digits: int = 3) -> str:
    """`+0.041 [-0.012, 0.094], p = 0.13` (‡ when not stable across seeds); `+0.041 (not tested)`."""
    if not _ok(d.get("diff")):
        return "n/a"
    if d.get("p_value") is None:
        return f"{num(d['diff'], digits, '+')} (not tested)"
    interval = f"[{num(d['low'], digits)}, {num(d['high'], digits)}]"
    cell = f"{num(d['diff'], digits, '+')} {interval}, {format_p(d['p_value'])}"
    return cell + (f" {TWO_WAY_MARK}" if unstable_across_seeds(d) else "")


def interval_cell(mean: float | None, low: float | None, high: float | None, interval: str | None) -> str:
    """lnrl-report's cell: `0.4 [0.1, 0.7] t` (t over seeds) or `... bs` (bootstrap from records)."""
    if mean is None:
        return ""
    if low is None or high is None:
        return f"{mean:.4g}"
    return f"{mean:.4g} [{low:.4g}, {high:.4g}] {'t' if interval == 't_seeds' else 'bs'}"


# -- lnrl-report --------------------------------------------------------------------------------

def _columns(fields: Sequence[str], rows: Sequence[dict]) -> list[str]:
    # Drop setting columns that are empty for every group (e.g. loss.beta in an AFT-only sweep).
    return [f for f in fields if any(r.get(f) is not None for r in rows)]


def summary_markdown(fields: Sequence[str], rows: Sequence[dict], metrics: Sequence[str]) -> str:
    cols = _columns(fields, rows)
    headers = [*cols, "n", "q", "failed", *metrics]
    body = [[*(r[c] for c in cols), r["n"], r.get("questions"), r["failed"] + r["incomplete"],
             *(interval_cell(r[f"{m}_mean"], r.get(f"{m}_low"), r.get(f"{m}_high"), r.get(f"{m}_interval"))
               for m in metrics)] for r in rows]
    return markdown_table(headers, body)


def diffs_markdown(fields: Sequence[str], rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """One row per compared group: its fields, the baseline group, `+d [low, high], p = ...` per metric."""
    cols = _columns(fields, rows)
    body = []
    for r in rows:
        cells = []
        for m in metrics:
            d = r["diffs"].get(m)
            cells.append("" if d is None else (diff_cell(d, 4) if d.get("p_value") is not None
                                               else f"{d['diff']:+.4g} (not tested)" if _ok(d.get("diff")) else ""))
        body.append([*(r[c] for c in cols), r["baseline_label"], r.get("questions"), *cells])
    return markdown_table([*cols, "baseline", "q", *metrics], body)


def runs_markdown(runs: Sequence[dict], fields: Sequence[str], metrics: Sequence[str], root: Path) -> str:
    cols = _columns(fields, runs)
    headers = ["status", *cols, "seed", *metrics, "dir"]
    body = [[r["status"], *(field_value(r, c) for c in cols), r["seed"], *(r["metrics"].get(m) for m in metrics),
             rel_path(r["dir"], root)] for r in runs]
    return markdown_table(headers, body)


# -- the main job's results (results.md) ----------------------------------------------------------

def _digits(metric: str) -> int:
    return METRICS[metric].digits if metric in METRICS else 3


def _label(metric: str) -> str:
    return METRICS[metric].label or metric if metric in METRICS else metric


def _size(v: Mapping[str, Any]) -> str:
    if v.get("n_pairs") is not None:
        return f"{v['n_pairs']} pairs / {v.get('n_questions')} q"
    return "" if v.get("n_questions") is None else f"{v['n_questions']} q"


def values_table(comp: Mapping[str, Any]) -> str:
    metrics = comp["metrics"]
    rows = []
    for name, m in comp["models"].items():
        rows.append([name, len(m["seeds"]), *(value_cell(m["metrics"][k], _digits(k)) for k in metrics)])
    base = comp["models"][comp["baseline"]]["metrics"]
    rows.append(["n", "", *(_size(base[k]) for k in metrics)])
    return markdown_table(["model", "seeds", *(_label(k) for k in metrics)], rows)


def diffs_table(comp: Mapping[str, Any]) -> str:
    metrics, baseline = comp["metrics"], comp["baseline"]
    rows = []
    if comp.get("step"):
        rows.append([f"{baseline} − {comp['reference']}", *(diff_cell(comp["step"][k], _digits(k)) for k in metrics)])
    for name, m in comp["models"].items():
        if m["vs_baseline"] is not None:
            rows.append([f"{name} − {baseline}", *(diff_cell(m["vs_baseline"][k], _digits(k)) for k in metrics)])
    for key, per in (comp.get("contrasts") or {}).items():  # method vs method (a Holm family of its own)
        rows.append([key.replace(" - ", " − "), *(diff_cell(per[k], _digits(k)) for k in metrics)])
    return markdown_table(["difference", *(_label(k) for k in metrics)], rows)


def results_table(results: Mapping[str, Any]) -> str:
    """The two tables of results.md: every model's values with intervals, then the paired differences."""
    comp = results["comparison"]
    return values_table(comp) + "\n\n" + diffs_table(comp)


def _half(lo: Any, hi: Any) -> float | None:
    return (hi - lo) / 2 if _ok(lo) and _ok(hi) else None


def reading(comp: Mapping[str, Any], alpha: float = 0.05) -> list[str]:
    """Sentences stating the sizes, the resolution they give, the tests and the number of comparisons."""
    models, baseline, ref = comp["models"], comp["baseline"], comp.get("reference")
    out = []
    base = models[baseline]["metrics"]
    seeds = {n: len(m["seeds"]) for n, m in models.items()}
    seeds_txt = ", ".join(f"{n} {s}" for n, s in seeds.items())
    parts = []
    for k, what in (("answer_acc", "the answer metrics"), ("near_miss_acc", "near-miss accuracy"),
                    ("assessment_acc", "assessment accuracy"), ("nll", "the gold NLL")):
        if k in base and base[k].get("n_questions") is not None:
            extra = f" ({base[k]['n_pairs']} candidate pairs)" if base[k].get("n_pairs") is not None else ""
            parts.append(f"{what} on {base[k]['n_questions']} questions{extra}")
    if parts:
        out.append(f"Sizes: {'; '.join(parts)}. Seeds per model: {seeds_txt}.")
    if "answer_acc" in base:
        halves = [h for m in models.values() if (h := _half(m["metrics"]["answer_acc"].get("low"),
                                                             m["metrics"]["answer_acc"].get("high"))) is not None]
        dh = [h for m in models.values() if m["vs_baseline"]
              and (h := _half(m["vs_baseline"]["answer_acc"].get("low"), m["vs_baseline"]["answer_acc"].get("high")))
              is not None]
        n = base["answer_acc"].get("n_questions")
        worst = (f" (at most ±{196 * math.sqrt(0.25 / n):.0f} points for an accuracy near 0.5 on {n} questions)"
                 if n else "")
        if halves and max(halves) == 0:
            out.append("Resolution: each model scored the same on every question (all right or all wrong), so its "
                       f"answer accuracy interval has zero width and cannot show the resolution{worst}.")
        elif halves:
            msg = (f"Resolution: the 95% interval on answer accuracy is up to ±{100 * max(halves):.1f} points wide "
                   f"per model{worst}")
            if dh:
                typical = sorted(dh)[len(dh) // 2]
                msg += (f", and a paired difference to {baseline} about ±{100 * typical:.1f} points: differences "
                        f"smaller than ~{100 * typical:.0f} points cannot be told apart from noise at this size, "
                        "whatever their sign")
            out.append(msg + ". A difference whose interval includes 0 is a null result at this size, not "
                       "evidence that the models are equal.")
    step = comp.get("step")
    if step and "answer_acc" in step and step["answer_acc"].get("p_value") is not None:
        d = step["answer_acc"]
        verdict = "learns" if d["p_value"] < alpha and d["diff"] > 0 else "does not measurably learn"
        out.append(f"The baseline {verdict} at this size: {baseline} − {ref} on answer accuracy "
                   f"{diff_cell(d)} (a separate test, outside the family below).")
    tests = [(n, k, d) for n, m in models.items() if m["vs_baseline"]
             for k, d in m["vs_baseline"].items() if d.get("p_value") is not None]
    if tests:
        names = sorted({n for n, _, _ in tests})
        n_metrics = len({k for _, k, _ in tests})
        msg = (f"Comparisons: {len(tests)} paired tests against {baseline} ({len(names)} "
               f"model{'s' * (len(names) > 1)}, {n_metrics} metric{'s' * (n_metrics > 1)}). The p-values in the "
               "table are per comparison: with "
               f"{len(tests)} tests, about {len(tests) * alpha:.1f} would fall below {alpha} by chance when "
               "nothing differs.")
        if len(tests) > 1:
            hits = [f"{n} {_label(k)}" for n, k, d in tests if d.get("p_holm") is not None and d["p_holm"] < alpha]
            msg += (f" Holm-adjusted over the {len(tests)} (p_holm in results.json), "
                    + (f"these stay below {alpha}: {', '.join(hits)}." if hits else f"none stays below {alpha}."))
        out.append(msg)
    extra = [(key, k, d) for key, per in (comp.get("contrasts") or {}).items() for k, d in per.items()
             if d.get("p_value") is not None]
    if extra:
        hits = [f"{key} {_label(k)}" for key, k, d in extra if d.get("p_holm") is not None and d["p_holm"] < alpha]
        out.append(f"Method contrasts ({', '.join(comp['contrasts'])}): {len(extra)} paired tests, Holm-adjusted "
                   "among themselves, " + (f"these stay below {alpha}: {', '.join(hits)}." if hits
                                            else f"none stays below {alpha}."))
    used = sorted({d["test"] for _, _, d in tests + extra}
                  | {d["test"] for d in (step or {}).values() if d.get("test")})
    intervals = sorted({v["interval"] for m in models.values() for v in m["metrics"].values() if v.get("interval")})
    out.append("Intervals: " + ", ".join(intervals) + " (bootstrap over questions for one seed, seeds × questions "
               "crossed for several; ratio metrics, assessment accuracy = Σ right / Σ pairs, gold NLL = "
               "Σ −log p / Σ tokens, near-miss accuracy = Σ correct / Σ flagged, resample (num, den) per "
               "question). "
               f"Tests: {', '.join(used) or 'none'} (paired by question id; docs/statistics.md).")
    if any(v.get("source") == "metrics.json" for m in models.values() for v in m["metrics"].values()):
        out.append("(no CI): value read from metrics.json; the run wrote no per-question records for that metric, "
                   "so it has no interval and no test.")
    if any(unstable_across_seeds(d) for n, k, d in tests):
        out.append(f"{TWO_WAY_MARK}: the paired interval excludes 0, but with the seeds resampled too it does not: "
                   "the difference is not stable across seeds.")
    return out


def results_markdown(results: Mapping[str, Any]) -> str:
    comp = results["comparison"]
    title = f"# lnrl results: {results.get('model')}" + (f" on {results['data']}" if results.get("data") else "")
    lines = [title, "", "## Held-out metrics (mean over seeds, 95% interval)", "", values_table(comp), "",
             f"## Paired differences to {comp['baseline']} (same questions)", "", diffs_table(comp), "",
             "## What these sizes can show", "", *(f"- {s}" for s in reading(comp)), ""]
    before, after = results.get("val_nll_before"), results.get("val_nll_after")
    lines.append(f"{comp['baseline']}: held-out gold NLL {num(before)} -> {num(after)}, answer accuracy "
                 f"{num(results.get('answer_acc_before'))} -> {num(results.get('answer_acc_after'))} "
                 f"({results.get('train_examples')} training / {results.get('eval_examples')} held-out questions).")
    setting = results.get("setting") or {}
    if "gold_as_chosen" in setting:
        lines.append("Gold CoTs in the preference data: " + (
            "on (data.gold_as_chosen=true): a question whose samples are all wrong gets its gold CoT as the "
            "chosen side / a positive member." if setting["gold_as_chosen"] else
            "off (data.gold_as_chosen=false): pairs and groups hold sampled completions only."))
    if setting:
        lines.append(f"Setting: `{json.dumps(setting, default=str)}`")
    if results.get("model") == CACHE_NAME:
        lines.append(EMBEDDED_NOTE)
    sizes = json.dumps(results.get("sizes"), default=str)
    lines.append(f"Total stage time {results.get('seconds', 0):.0f} s. Sizes: `{sizes}`")
    return "\n".join(lines) + "\n"
