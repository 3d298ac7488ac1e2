"""Per-question evaluation records: lnrl-train writes what lnrl-eval writes, and the results tables read them."""

from __future__ import annotations

import json

import pytest

from conftest import compose_cfg
from lnrl.apps.evaluate import evaluate
from lnrl.apps.train import train
from lnrl.evaluation import RECORD_FILES, EvalResult
from lnrl.reporting.compare import BY_KEY, DEFAULT_METRICS, METRICS, compare, summarize_metric
from lnrl.reporting.records import load_records
from lnrl.utils import write_json, write_jsonl

NEW = {"val/harness_strict_match": "harness_strict_match", "val/harness_flexible_extract": "harness_flexible_extract",
       "val/pass@1": "pass_at_1", "val/pass@k": "pass_at_k", "val/maj@k": "maj_at_k"}


def _from_records(run_dir, name: str) -> float:
    v = summarize_metric("run", {"0": load_records(run_dir)}, METRICS[name], n_boot=200)
    assert v.source == "records", (name, v.note)
    return v.value


def test_train_writes_the_eval_records_lnrl_eval_writes(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(["eval.samples.k=2", "callbacks=none", "export_hf=false"]))
    files = sorted(p.name for p in tmp_path.glob("*.json*"))
    assert files == ["assessment.jsonl", "data_split.json", "generations.jsonl", "metrics.json", "nll.jsonl",
                     "samples.jsonl"]
    gens = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 4 and {"id", "correct", "n_tokens", "truncated", "degenerate"} <= set(gens[0])
    assert (tmp_path / "assessment.jsonl").read_text() == ""  # no candidates: measured on no question
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [len(r["completions"]) for r in samples] == [2, 2, 2, 2]
    # Every metric the tables compute from these records is the one metrics.json holds.
    for name in ("answer_acc", "gen_len", "nll", "pass_at_1", "pass_at_k", "maj_at_k"):
        assert _from_records(tmp_path, name) == pytest.approx(metrics[METRICS[name].key], rel=1e-9), name


def test_train_with_the_harness_protocol_writes_harness_records(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(["eval.protocol=harness_gsm8k", "callbacks=none", "export_hf=false"]))
    assert not (tmp_path / "generations.jsonl").exists() and "val/answer_acc" not in metrics
    rows = [json.loads(x) for x in (tmp_path / "harness.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["shots"]) == 5 and r["prompt_tokens"] > 100 for r in rows)
    assert all(s.startswith("gsm_symbolic/") for r in rows for s in r["shots"])  # shots from the training split
    for name in ("harness_strict_match", "harness_flexible_extract", "nll"):
        assert _from_records(tmp_path, name) == pytest.approx(metrics[METRICS[name].key], rel=1e-9), name


def test_lnrl_eval_with_the_harness_protocol_and_samples(tmp_path):
    cfg = compose_cfg(["model=tiny", "eval.protocol=harness_gsm8k", "eval.samples.k=2", "eval.n_examples=3",
                       "eval.max_new_tokens=6", "data.source.n_train=16", "data.source.n_eval=3"], tmp_path,
                      config_name="eval")
    metrics = evaluate(cfg)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["assessment.jsonl", "harness.jsonl", "nll.jsonl",
                                                                "samples.jsonl"]
    assert metrics["val/harness_questions"] == metrics["val/samples_questions"] == 3.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("harness_flexible_extract", "pass_at_1", "maj_at_k"):
        assert _from_records(tmp_path, name) == pytest.approx(saved[METRICS[name].key], rel=1e-9), name


def test_every_record_file_written_is_read_back(tmp_path):
    full = EvalResult({"val/n_examples": 1.0}, [{"id": "q", "correct": True}], [{"id": "q", "pairs": 1, "right": 1}],
                      [{"id": "q", "logp_sum": -3.0, "n_tokens": 2}],
                      [{"id": "q", "strict_match": True, "flexible_extract": False}],
                      [{"id": "q", "pass_at_1": 0.5, "pass_at_k": 1.0, "maj_at_k": 0.0}])
    assert sorted(p.name for p in full.write_records(tmp_path)) == sorted(RECORD_FILES.values())
    write_json(tmp_path / "metrics.json", full.metrics)
    rec = load_records(tmp_path)
    assert {k: list(v) for k, v in rec.tables.items()} == {k: ["q"] for k in RECORD_FILES}
    # A later evaluation into the same dir without those parts leaves no stale records behind.
    EvalResult(full.metrics, None).write_records(tmp_path)
    assert not any((tmp_path / RECORD_FILES[k]).exists() for k in ("generations", "harness", "samples"))
    assert load_records(tmp_path).tables["harness"] is None


def test_new_metrics_are_registered_but_not_in_the_default_tables():
    assert {k: BY_KEY[k].name for k in NEW} == NEW  # lnrl-report --metrics val/pass@k ... finds them
    assert not set(NEW.values()) & set(DEFAULT_METRICS)  # the main job's tables keep their columns


def test_compare_pairs_models_on_harness_and_sample_records(tmp_path):
    strict = {"a": [1, 0, 0, 1, 0, 0], "b": [1, 1, 1, 1, 0, 1]}
    pass_k = {"a": [1.0, 0.5, 0.0, 1.0, 0.0, 0.5], "b": [1.0, 1.0, 0.5, 1.0, 0.0, 1.0]}
    dirs = {}
    for m in ("a", "b"):
        d = tmp_path / m
        d.mkdir()
        write_jsonl(d / "harness.jsonl", [{"id": f"q{i}", "strict_match": bool(s), "flexible_extract": True}
                                          for i, s in enumerate(strict[m])])
        write_jsonl(d / "samples.jsonl", [{"id": f"q{i}", "pass_at_1": p / 2, "pass_at_k": p, "maj_at_k": p}
                                          for i, p in enumerate(pass_k[m])])
        write_json(d / "metrics.json", {"val/harness_strict_match": sum(strict[m]) / 6})
        dirs[m] = {0: d}
    comp = compare(dirs, baseline="a", reference=None, metrics=["harness_strict_match", "pass_at_k"], n_boot=500)
    assert comp.models["b"]["harness_strict_match"].value == pytest.approx(5 / 6)
    assert comp.models["a"]["pass_at_k"].value == pytest.approx(3 / 6)
    d = comp.diffs["b"]["harness_strict_match"]
    # b right where a was wrong on 3 questions, never the reverse: exact McNemar 2 * (1/2)^3 = 0.25.
    assert (d.diff, d.a_only, d.b_only, d.test) == (pytest.approx(0.5), 0, 3, "mcnemar_exact")
    assert d.p_value == pytest.approx(0.25)
    assert comp.diffs["b"]["pass_at_k"].diff == pytest.approx(1.5 / 6)
