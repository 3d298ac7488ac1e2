"""Every model's held-out metrics with 95% intervals, and paired differences to a baseline.

    comp = compare({"base": {0: "out/eval/base"},                  # seed-independent: one seed
                    "vft": {0: "out/eval/vft_s0", 1: "out/eval/vft_s1"},
                    "aft": {0: "out/eval/aft_s0", 1: "out/eval/aft_s1"}}, baseline="vft", reference="base")
    comp.models["aft"]["answer_acc"]      # MetricValue: value [low, high], n questions (pairs), seeds
    comp.diffs["aft"]["answer_acc"]       # MetricDiff: aft - vft on the same questions, p-value, test
    comp.step["answer_acc"]               # MetricDiff: vft - base (the baseline must itself learn)
    compare(..., contrasts=[("dpo", "wdpo")]).contrasts["wdpo - dpo"]   # method vs method, same questions
    comp.as_dict()                        # JSON-ready

A model's value of a metric is the mean over its seeds of the per-seed value. Its interval comes
from the per-question records (lnrl.reporting.records) through lnrl.stats: `metric_ci` for
per-question metrics (question bootstrap for one seed, seeds x questions for several) and
`ratio_ci` for ratio-of-sums metrics (assessment accuracy, gold NLL, near-miss accuracy).
Differences pair questions by `id`: `paired_diff` / `paired_ratio_diff` (exact McNemar, exact or
Monte Carlo sign-flip, swap permutation: `MetricDiff.test` says which). Models evaluated on
different question sets are refused. A metric without records (older runs) is the mean of the
seeds' metrics.json values, without an interval and without a test (`source == "metrics.json"`).
docs/statistics.md has the reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lnrl.reporting.records import RunRecords, column, load_records
from lnrl.stats import holm, metric_ci, paired_diff, paired_ratio_diff, ratio_ci

PerQ = dict[Hashable, float]


# ----------------------------------------------------------------------------- the metrics


def _field(kind: str, name: str, check: str) -> Callable[[RunRecords], tuple[PerQ, PerQ | None] | None]:
    """A per-question mean of one checked field of the `kind` records."""
    def extract(rec: RunRecords):
        v = column(rec, kind, name, check)
        return None if v is None else (v, None)
    return extract


def _flag(name: str) -> Callable[[RunRecords], tuple[PerQ, PerQ | None] | None]:
    return _field("generations", name, "flag")


def _gen_len(rec: RunRecords):
    v = column(rec, "generations", "n_tokens", "count")
    return None if v is None else (v, None)


def _near_miss(rec: RunRecords):
    correct = column(rec, "generations", "correct", "flag")
    near = column(rec, "generations", "near_miss", "flag_or_null")
    if correct is None or near is None:
        return None
    return {q: correct[q] * near[q] for q in correct}, near


def _assessment(rec: RunRecords):
    right = column(rec, "assessment", "right", "number")
    pairs = column(rec, "assessment", "pairs", "count")
    if right is None or pairs is None:
        return None
    for q, r in right.items():
        if not 0 <= r <= pairs[q]:
            row = rec.tables["assessment"][q]
            raise ValueError(f"{rec.files['assessment']}:{row['_line']}: field 'right' = {r!r} must lie in "
                             f"[0, pairs = {pairs[q]!r}] (question id {q!r})")
    return right, pairs


def _nll(rec: RunRecords):
    logp = column(rec, "nll", "logp_sum", "number")
    tokens = column(rec, "nll", "n_tokens", "count")
    if logp is None or tokens is None:
        return None
    return {q: -v for q, v in logp.items()}, tokens


@dataclass(frozen=True)
class Metric:
    """A table metric: its metrics.json key, the record file it is computed from, and how.

    `extract(records)` -> ({id: value}, None) for a per-question mean, ({id: num}, {id: den}) for a
    ratio of sums, or None when the run lacks the records. `size_keys`: metrics.json keys that give
    the number of questions (and pairs) when there are no records.
    """

    name: str
    key: str
    kind: str  # the record file: generations | assessment | nll | harness | samples
    ratio: bool
    extract: Callable[[RunRecords], tuple[PerQ, PerQ | None] | None] = field(repr=False, compare=False)
    digits: int = 3
    label: str = ""
    proportion: bool = True  # a value in [0, 1] (plots use that axis)
    size_keys: tuple[str | None, str | None] = ("val/n_examples", None)
    default: bool = True  # in DEFAULT_METRICS; False for the opt-in evaluations (eval.protocol, eval.samples)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("answer_acc", "val/answer_acc", "generations", False, _flag("correct"), label="answer acc"),
    Metric("near_miss_acc", "val/near_miss_acc", "generations", True, _near_miss, label="near-miss acc",
           size_keys=("val/near_miss_questions", None)),
    Metric("assessment_acc", "val/assessment_acc", "assessment", True, _assessment, label="assessment acc",
           size_keys=("val/assessment_questions", "val/assessment_pairs")),
    Metric("gen_len", "val/gen_len", "generations", False, _gen_len, digits=1, label="gen length (tokens)",
           proportion=False),
    Metric("degenerate_rate", "val/degenerate_rate", "generations", False, _flag("degenerate"), label="degenerate"),
    Metric("truncated_rate", "val/truncated_rate", "generations", False, _flag("truncated"), label="truncated"),
    Metric("no_answer_rate", "val/no_answer_rate", "generations", False, _flag("no_answer"), label="no answer"),
    Metric("nll", "val/nll", "nll", True, _nll, label="gold NLL", proportion=False,
           size_keys=("val/nll_questions", None)),
    # Opt-in evaluations (docs/evaluation_protocols.md): shown when asked for by name or key.
    Metric("harness_strict_match", "val/harness_strict_match", "harness", False,
           _field("harness", "strict_match", "flag"), label="harness strict-match",
           size_keys=("val/harness_questions", None), default=False),
    Metric("harness_flexible_extract", "val/harness_flexible_extract", "harness", False,
           _field("harness", "flexible_extract", "flag"), label="harness flexible-extract",
           size_keys=("val/harness_questions", None), default=False),
    Metric("pass_at_1", "val/pass@1", "samples", False, _field("samples", "pass_at_1", "number"), label="pass@1",
           size_keys=("val/samples_questions", None), default=False),
    Metric("pass_at_k", "val/pass@k", "samples", False, _field("samples", "pass_at_k", "number"), label="pass@k",
           size_keys=("val/samples_questions", None), default=False),
    Metric("maj_at_k", "val/maj@k", "samples", False, _field("samples", "maj_at_k", "number"), label="maj@k",
           size_keys=("val/samples_questions", None), default=False),
)}
DEFAULT_METRICS = tuple(name for name, m in METRICS.items() if m.default)
BY_KEY = {m.key: m for m in METRICS.values()}  # val/answer_acc -> answer_acc (lnrl-report's metric names)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MetricValue:
    """One metric of one model: mean over seeds of the per-seed value, its interval and sizes.

    `interval`: the lnrl.stats CI method ("bootstrap", "two_way_bootstrap", "ratio_bootstrap",
    "ratio_two_way_bootstrap") or None (no records: `source` "metrics.json"; or nothing measured:
    `source` "none"). `n_questions`: questions it rests on; `n_pairs`: assessment pairs (per seed).
    """

    metric: str
    value: float | None
    low: float | None = None
    high: float | None = None
    interval: str | None = None
    source: str = "none"  # records | metrics.json | none
    n_questions: int | None = None
    n_pairs: int | None = None
    n_seeds: int = 0
    per_seed: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MetricDiff:
    """`b` minus baseline `a` on the same questions; None fields when it could not be tested (`note`).

    `test`: the PairedDiff test (mcnemar_exact, sign_flip_exact, sign_flip_monte_carlo,
    ratio_swap_exact, ratio_swap_monte_carlo). `two_way_low/high`: the interval with each side's
    seeds resampled too (None when both have one seed). `p_holm`: Holm-adjusted over the table's
    family of comparisons (Comparison.diffs), None outside it.
    """

    metric: str
    a: str
    b: str
    diff: float | None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    test: str | None = None
    n_questions: int | None = None
    n_pairs: int | None = None
    n_seeds_a: int = 0
    n_seeds_b: int = 0
    a_only: int | None = None
    b_only: int | None = None
    two_way_low: float | None = None
    two_way_high: float | None = None
    p_holm: float | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    baseline: str
    reference: str | None
    metrics: tuple[str, ...]
    level: float
    n_boot: int
    seeds: dict[str, list[str]]
    models: dict[str, dict[str, MetricValue]]  # reference, baseline, then the others in input order
    diffs: dict[str, dict[str, MetricDiff]]    # model - baseline, for every model but the baseline and reference
    step: dict[str, MetricDiff] | None         # baseline - reference (None without a reference)
    # "b - a" for each requested (a, b): method-vs-method questions (weighted vs plain DPO, mean vs sum),
    # Holm-adjusted as a family of their own
    contrasts: dict[str, dict[str, MetricDiff]] = field(default_factory=dict)

    @property
    def n_tests(self) -> int:
        """Paired tests in the model-vs-baseline family (what Holm adjusts over)."""
        return sum(d.p_value is not None for per in self.diffs.values() for d in per.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline, "reference": self.reference, "metrics": list(self.metrics),
            "level": self.level, "n_boot": self.n_boot, "n_tests": self.n_tests,
            "models": {name: {"seeds": self.seeds[name],
                              "metrics": {m: v.as_dict() for m, v in per.items()},
                              "vs_baseline": ({m: d.as_dict() for m, d in self.diffs[name].items()}
                                              if name in self.diffs else None)}
                       for name, per in self.models.items()},
            "step": None if self.step is None else {m: d.as_dict() for m, d in self.step.items()},
            "contrasts": {k: {m: d.as_dict() for m, d in per.items()} for k, per in self.contrasts.items()},
        }


# ----------------------------------------------------------------------------- per seed, per question


@dataclass
class _Aligned:
    """One metric of one model: per seed, the values on the sorted question ids (den for ratios)."""

    ids: list[Hashable]
    num: dict[str, np.ndarray]
    den: dict[str, np.ndarray] | None
    dirs: dict[str, Path]


def _id_key(q: Hashable) -> tuple[str, str]:
    return (type(q).__name__, str(q))


def _id_sample(ids: set) -> str:
    shown = sorted(ids, key=_id_key)[:5]
    return ", ".join(map(repr, shown)) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")


def check_same_questions(what: str, sets: Mapping[str, tuple[set, Path]]) -> None:
    """Raise unless every labelled id set is the same (a paired comparison needs the same questions)."""
    items = list(sets.items())
    first_label, (first, first_dir) = items[0]
    for label, (ids, where) in items[1:]:
        if ids != first:
            missing, extra = first - ids, ids - first
            parts = [f"{len(missing)} missing ({_id_sample(missing)})" if missing else "",
                     f"{len(extra)} extra ({_id_sample(extra)})" if extra else ""]
            raise ValueError(
                f"{what}: {label} ({where}) was evaluated on different questions than {first_label} "
                f"({first_dir}): {', '.join(p for p in parts if p)} by id. A paired comparison needs every "
                "model (and seed) evaluated on the same held-out questions and the same candidate file.")


def _aligned(name: str, seeds: Mapping[str, RunRecords], metric: Metric) -> _Aligned | None:
    """The metric's per-question values for every seed of `name`; None when a seed lacks the records."""
    got = {s: metric.extract(rec) for s, rec in seeds.items()}
    if any(v is None for v in got.values()):
        return None
    check_same_questions(f"{metric.name} ({metric.kind} records)",
                         {f"'{name}' seed {s}": (set(v[0]), seeds[s].dir) for s, v in got.items()})
    ids = sorted(next(iter(got.values()))[0], key=_id_key)
    num = {s: np.array([v[0][q] for q in ids], dtype=float) for s, v in got.items()}
    den = None if not metric.ratio else {s: np.array([v[1][q] for q in ids], dtype=float) for s, v in got.items()}
    return _Aligned(ids, num, den, {s: rec.dir for s, rec in seeds.items()})


def _measured_seeds(al: _Aligned) -> list[str]:
    return [s for s in al.num if al.den is None or al.den[s].sum() > 0]


def _round_count(x: float | None) -> int | None:
    return None if x is None or not math.isfinite(x) else int(round(x))


def _from_metrics_json(seeds: Mapping[str, RunRecords], metric: Metric, note: str) -> MetricValue:
    vals = {s: rec.metrics.get(metric.key) for s, rec in seeds.items()}
    have = [v for v in vals.values() if v is not None]
    nq_key, np_key = metric.size_keys
    first = next(iter(seeds.values())).metrics
    if not have:
        return MetricValue(metric.name, None, source="none", n_seeds=len(seeds), per_seed=vals,
                           note=f"{metric.key} is in no metrics.json and no per-question records")
    return MetricValue(metric.name, float(np.mean(have)), source="metrics.json",
                       n_questions=_round_count(first.get(nq_key)) if nq_key else None,
                       n_pairs=_round_count(first.get(np_key)) if np_key else None,
                       n_seeds=len(have), per_seed=vals, note=note)


def summarize_metric(name: str, seeds: Mapping[str, RunRecords], metric: Metric, *, n_boot: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> MetricValue:
    """The metric of model `name` over its seeds ({seed label: records}): value, interval, sizes."""
    al = _aligned(name, seeds, metric)
    if al is None:
        return _from_metrics_json(seeds, metric, "no per-question records: value from metrics.json, no interval")
    if not al.ids:
        return MetricValue(metric.name, None, source="records", n_questions=0,
                           n_pairs=0 if metric.name == "assessment_acc" else None, n_seeds=len(seeds),
                           per_seed={s: None for s in seeds},
                           note=f"empty {metric.kind} records: measured on no question")
    if metric.ratio:
        measured = _measured_seeds(al)
        per_seed = {s: (float(al.num[s].sum() / al.den[s].sum()) if s in measured else None) for s in al.num}
        if not measured:
            return MetricValue(metric.name, None, source="records", n_questions=0, n_seeds=len(seeds),
                               per_seed=per_seed, note="no question has a denominator (no pairs / flags)")
        ci = ratio_ci({s: al.num[s] for s in measured}, {s: al.den[s] for s in measured},
                      n_boot=n_boot, level=level, seed=seed)
        pairs = float(np.mean([al.den[s].sum() for s in measured])) if metric.name == "assessment_acc" else None
        left_out = sorted(set(al.num) - set(measured))
        note = f"seeds without a denominator left out: {left_out}" if left_out else None
        return MetricValue(metric.name, ci.value, ci.low, ci.high, ci.method, "records", ci.n,
                           _round_count(pairs), ci.n_seeds, per_seed, note)
    ci = metric_ci(dict(al.num), n_boot=n_boot, level=level, seed=seed)
    per_seed = {s: float(v.mean()) for s, v in al.num.items()}
    return MetricValue(metric.name, ci.value, ci.low, ci.high, ci.method, "records", ci.n, None, ci.n_seeds, per_seed)


def diff_metric(a: str, a_seeds: Mapping[str, RunRecords], b: str, b_seeds: Mapping[str, RunRecords],
                metric: Metric, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0,
                values: tuple[MetricValue, MetricValue] | None = None) -> MetricDiff:
    """`b` minus `a` on the same questions (paired by id). Raises when they were evaluated on different
    questions; untestable (no records on a side) gives the difference of the values with a `note`."""
    al_a, al_b = _aligned(a, a_seeds, metric), _aligned(b, b_seeds, metric)
    if al_a is None or al_b is None:
        va, vb = values or (_from_metrics_json(a_seeds, metric, ""), _from_metrics_json(b_seeds, metric, ""))
        diff = None if va.value is None or vb.value is None else vb.value - va.value
        lacking = " and ".join(f"'{n}'" for n, al in ((a, al_a), (b, al_b)) if al is None)
        return MetricDiff(metric.name, a, b, diff, n_seeds_a=len(a_seeds), n_seeds_b=len(b_seeds),
                          note=f"not tested: {lacking} without per-question {metric.kind} records (metrics.json only)")
    check_same_questions(f"{metric.name} ({metric.kind} records)",
                         {f"'{a}'": (set(al_a.ids), next(iter(al_a.dirs.values()))),
                          f"'{b}'": (set(al_b.ids), next(iter(al_b.dirs.values())))})
    if not al_a.ids:
        return MetricDiff(metric.name, a, b, None, n_questions=0, n_seeds_a=len(a_seeds), n_seeds_b=len(b_seeds),
                          note=f"not tested: empty {metric.kind} records on both sides")
    if metric.ratio:
        ma, mb = _measured_seeds(al_a), _measured_seeds(al_b)
        if not ma or not mb:
            return MetricDiff(metric.name, a, b, None, n_seeds_a=len(a_seeds), n_seeds_b=len(b_seeds),
                              note="not tested: no question has a denominator (no pairs / flags) on one side")
        d = paired_ratio_diff({s: al_a.num[s] for s in ma}, {s: al_a.den[s] for s in ma},
                              {s: al_b.num[s] for s in mb}, {s: al_b.den[s] for s in mb},
                              n_boot=n_boot, level=level, seed=seed)
        pairs = (_round_count(float(np.mean([al_a.den[s].sum() for s in ma])))
                 if metric.name == "assessment_acc" else None)
    else:
        d = paired_diff(dict(al_a.num), dict(al_b.num), n_boot=n_boot, level=level, seed=seed)
        pairs = None
    tw = d.two_way
    return MetricDiff(metric.name, a, b, d.diff, d.low, d.high, d.p_value, d.test, d.n, pairs, d.n_seeds_a,
                      d.n_seeds_b, d.a_only, d.b_only, tw.low if tw else None, tw.high if tw else None)


# ----------------------------------------------------------------------------- the comparison


def load_models(eval_dirs: Mapping[str, Mapping[Any, str | Path]]) -> dict[str, dict[str, RunRecords]]:
    """{model: {seed label: RunRecords}} from {model: {seed: eval dir}} (seed labels are str(seed))."""
    out = {}
    for name, seeds in eval_dirs.items():
        if not isinstance(seeds, Mapping) or not seeds:
            raise ValueError(f"model '{name}': expected a non-empty mapping {{seed: eval dir}}, got {seeds!r}")
        labels = [str(s) for s in seeds]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model '{name}': seeds {list(seeds)} collide as labels {labels}")
        out[name] = {str(s): load_records(d) for s, d in seeds.items()}
    return out


def compare(eval_dirs: Mapping[str, Mapping[Any, str | Path]], *, baseline: str = "vft",
            reference: str | None = "base", metrics: Sequence[str] = DEFAULT_METRICS, n_boot: int = 10_000,
            level: float = 0.95, seed: int = 0, contrasts: Sequence[tuple[str, str]] = ()) -> Comparison:
    """Every model's metrics with intervals and its paired difference to `baseline` (module docstring).

    `eval_dirs`: {model: {seed: eval dir}}; a model with one seed (e.g. the seed-independent base
    model) is fine. `reference`: the model the baseline is trained from; its step to the baseline
    (baseline - reference) is reported as `step` (skipped when the reference is absent or None).
    `seed` seeds every bootstrap and Monte Carlo test, so the tables are reproducible. `contrasts`:
    pairs (a, b) of models whose difference b - a is tested too (key "b - a"; pairs naming a model
    that is not there are left out), Holm-adjusted among themselves.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    if baseline not in eval_dirs:
        raise ValueError(f"baseline '{baseline}' is not among the models {list(eval_dirs)}")
    runs = load_models(eval_dirs)
    ref = reference if reference in runs and reference != baseline else None
    order = [n for n in (ref, baseline) if n] + [n for n in runs if n not in (ref, baseline)]
    kw = dict(n_boot=n_boot, level=level, seed=seed)
    chosen = [METRICS[m] for m in metrics]
    models = {n: {m.name: summarize_metric(n, runs[n], m, **kw) for m in chosen} for n in order}

    def vs(a: str, b: str) -> dict[str, MetricDiff]:
        return {m.name: diff_metric(a, runs[a], b, runs[b], m, values=(models[a][m.name], models[b][m.name]), **kw)
                for m in chosen}

    diffs = {n: vs(baseline, n) for n in order if n not in (ref, baseline)}
    bad = [c for c in contrasts if len(c) != 2]
    if bad:
        raise ValueError(f"contrasts: {bad}; expected pairs [a, b] of model names (b - a is tested)")
    extra = {f"{b} - {a}": vs(a, b) for a, b in contrasts if a in runs and b in runs and a != b}
    for family in (diffs, extra):
        tested = [(n, m) for n, per in family.items() for m, d in per.items() if d.p_value is not None]
        for (n, m), p in zip(tested, holm([family[n][m].p_value for n, m in tested]) if tested else []):
            family[n][m] = replace(family[n][m], p_holm=p)
    return Comparison(baseline, ref, tuple(metrics), level, n_boot, {n: list(runs[n]) for n in order}, models,
                      diffs, vs(ref, baseline) if ref else None, extra)
