"""lnrl.reporting.compare and the main job's results files on hand-made eval dirs (values by hand).

Six held-out questions q1..q6; models base (one seed), vft and aft (seeds 0 and 1):

    correct          q1 q2 q3 q4 q5 q6     answer_acc
    base             0  0  0  0  0  0      0
    vft  s0, s1      1  0  0  1  0  0      1/3
    aft  s0          1  1  1  1  0  0      4/6
    aft  s1          1  1  1  1  1  0      5/6  -> mean 0.75

    aft - vft: seed means d = (0, 1, 1, 0, 1/2, 0), diff 2.5/6; on the 1/(2*2) lattice the three
    non-zero d all have the same sign: 2 of the 8 sign patterns reach |sum d| -> p = 0.25.
    One seed each (s0 vs s0): discordant only-aft = 2 (q2, q3), only-vft = 0 -> McNemar p = 2/4 = 0.5.
    vft - base (the step): d = 1 on q1, q4 -> p = 2/4 = 0.5, diff 1/3.
    near_miss flagged on q2, q3, q5: vft 0/3, aft (2/3 + 3/3)/2 = 5/6; d = (1, 1, 1/2) -> p = 0.25.
    n_tokens vft 10..60 (mean 35), aft +2 on each (37): d = 2 six times -> p = 2/64.
    assessment (q1..q4, pairs 2, 1, 4, 1): right vft (1, 0, 2, 1/2) -> 3.5/8 = 0.4375 both seeds;
    aft s0 (2, 1, 3, 1/2) -> 6.5/8, s1 (2, 1, 4, 1) -> 1 -> 0.90625; d = (1, 1, 1.5, 0.25) -> p = 2/16.
    gold NLL (tokens 10, 20, 10, 20, 10, 30): logp = -k * tokens with k = 2 (base), 1 (vft),
    0.5 / 0.7 (aft s0 / s1) -> NLL 2, 1, 0.6; aft - vft d = -0.4 * tokens, all negative -> p = 2/64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lnrl.reporting import collect_results, compare, write_results
from lnrl.reporting.compare import DEFAULT_METRICS

IDS = ["q1", "q2", "q3", "q4", "q5", "q6"]
NEAR = {"q2", "q3", "q5"}
TOKENS = [10, 20, 10, 20, 10, 30]
PAIRS = [2, 1, 4, 1]
CORRECT = {("base", 0): [0] * 6, ("vft", 0): [1, 0, 0, 1, 0, 0], ("vft", 1): [1, 0, 0, 1, 0, 0],
           ("aft", 0): [1, 1, 1, 1, 0, 0], ("aft", 1): [1, 1, 1, 1, 1, 0]}
LENGTH = {"base": [50] * 6, "vft": [10, 20, 30, 40, 50, 60], "aft": [12, 22, 32, 42, 52, 62]}
RIGHT = {("base", 0): [1, 0.5, 2, 0.5], ("vft", 0): [1, 0, 2, 0.5], ("vft", 1): [1, 0, 2, 0.5],
         ("aft", 0): [2, 1, 3, 0.5], ("aft", 1): [2, 1, 4, 1]}
K_NLL = {("base", 0): 2.0, ("vft", 0): 1.0, ("vft", 1): 1.0, ("aft", 0): 0.5, ("aft", 1): 0.7}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_eval_dir(root: Path, name: str, seed: int, *, ids=IDS, new_fields: bool = True, per_question: bool = True,
                  reverse: bool = False) -> Path:
    """An lnrl-eval output dir: metrics.json (aggregates agreeing with the records) + the record files."""
    d = root / f"{name}_s{seed}"
    d.mkdir(parents=True)
    correct, length = CORRECT[(name, seed)], LENGTH[name]
    gens = []
    for i, q in enumerate(ids):
        r = {"id": q, "question": f"Q {q}?", "answer": "1", "completion": "...", "pred": "1" if correct[i] else "2",
             "correct": bool(correct[i]), "n_tokens": length[i], "truncated": False, "profile": {}}
        if new_fields:
            r |= {"degenerate": False, "no_answer": name == "base", "near_miss": q in NEAR}
        gens.append(r)
    right = RIGHT[(name, seed)]
    assess = [{"id": q, "pairs": p, "right": r} for q, p, r in zip(ids[:4], PAIRS, right)]
    nll = [{"id": q, "logp_sum": -K_NLL[(name, seed)] * t, "n_tokens": t} for q, t in zip(ids, TOKENS)]
    if reverse:  # records in another order than the baseline's: matching must go by id
        gens, assess, nll = gens[::-1], assess[::-1], nll[::-1]
    metrics = {"model": "tiny-llama", "val/answer_acc": sum(correct) / 6, "val/gen_len": sum(length) / 6,
               "val/degenerate_rate": 0.5 if not new_fields else 0.0, "val/truncated_rate": 0.0,
               "val/assessment_acc": sum(right) / sum(PAIRS), "val/assessment_pairs": 8.0,
               "val/assessment_questions": 4.0, "val/nll": K_NLL[(name, seed)], "val/n_examples": 6.0}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if per_question:
        write_jsonl(d / "generations.jsonl", gens)
        if new_fields:
            write_jsonl(d / "assessment.jsonl", assess)
            write_jsonl(d / "nll.jsonl", nll)
    return d


@pytest.fixture
def dirs(tmp_path):
    return {"base": {0: make_eval_dir(tmp_path, "base", 0)},
            "vft": {s: make_eval_dir(tmp_path, "vft", s) for s in (0, 1)},
            "aft": {s: make_eval_dir(tmp_path, "aft", s, reverse=True) for s in (0, 1)}}


def test_values_sizes_and_intervals_by_hand(dirs):
    comp = compare(dirs, n_boot=2000)
    assert list(comp.models) == ["base", "vft", "aft"] and comp.seeds["aft"] == ["0", "1"]
    aft, vft, base = comp.models["aft"], comp.models["vft"], comp.models["base"]
    assert aft["answer_acc"].value == pytest.approx(0.75)
    assert aft["answer_acc"].per_seed == pytest.approx({"0": 4 / 6, "1": 5 / 6})
    assert (aft["answer_acc"].n_questions, aft["answer_acc"].n_seeds) == (6, 2)
    assert aft["answer_acc"].interval == "two_way_bootstrap" and base["answer_acc"].interval == "bootstrap"
    assert (base["answer_acc"].low, base["answer_acc"].high) == (0.0, 0.0)  # every resample of all-wrong is 0
    for m in DEFAULT_METRICS:
        v = aft[m]
        assert v.source == "records" and v.low <= v.value <= v.high, m
    assert aft["near_miss_acc"].value == pytest.approx(5 / 6) and aft["near_miss_acc"].n_questions == 3
    assert aft["assessment_acc"].value == pytest.approx(0.90625)
    assert (aft["assessment_acc"].n_questions, aft["assessment_acc"].n_pairs) == (4, 8)
    assert aft["assessment_acc"].interval == "ratio_two_way_bootstrap"
    assert vft["assessment_acc"].value == pytest.approx(0.4375) and base["assessment_acc"].value == pytest.approx(0.5)
    assert aft["nll"].value == pytest.approx(0.6) and vft["nll"].value == pytest.approx(1.0)
    assert aft["gen_len"].value == pytest.approx(37) and base["no_answer_rate"].value == 1.0


def test_paired_differences_tests_and_holm_by_hand(dirs):
    comp = compare(dirs, n_boot=2000)
    d = comp.diffs["aft"]
    assert set(comp.diffs) == {"aft"}  # neither the baseline nor the reference is compared with the baseline
    assert d["answer_acc"].diff == pytest.approx(2.5 / 6)
    assert (d["answer_acc"].p_value, d["answer_acc"].test) == (pytest.approx(0.25), "sign_flip_exact")
    assert d["answer_acc"].two_way_low is not None and d["answer_acc"].n_questions == 6
    assert d["near_miss_acc"].diff == pytest.approx(5 / 6) and d["near_miss_acc"].p_value == pytest.approx(0.25)
    assert d["assessment_acc"].diff == pytest.approx(0.46875) and d["assessment_acc"].p_value == pytest.approx(0.125)
    assert d["assessment_acc"].n_pairs == 8
    assert d["gen_len"].diff == pytest.approx(2) and d["gen_len"].p_value == pytest.approx(1 / 32)
    assert d["nll"].diff == pytest.approx(-0.4) and d["nll"].p_value == pytest.approx(1 / 32)
    assert d["degenerate_rate"].p_value == 1.0
    # Holm over the 8 tests: 1/32 * 8 = 0.25 (both), 0.125 * 6 = 0.75, the rest 1.
    assert comp.n_tests == 8
    assert d["gen_len"].p_holm == pytest.approx(0.25) and d["nll"].p_holm == pytest.approx(0.25)
    assert d["assessment_acc"].p_holm == pytest.approx(0.75) and d["answer_acc"].p_holm == 1.0
    step = comp.step["answer_acc"]
    assert (step.a, step.b) == ("base", "vft") and step.diff == pytest.approx(1 / 3)
    assert step.p_value == pytest.approx(0.5) and step.p_holm is None


def test_method_contrasts_are_their_own_holm_family(dirs):
    """contrasts=[(a, b)] tests b - a like a baseline difference (the hand values above: aft - vft), Holm-
    adjusted among the contrasts only; a pair naming a missing model is left out; the table shows the row."""
    from lnrl.reporting.tables import diffs_table

    comp = compare(dirs, n_boot=2000, contrasts=[("vft", "aft"), ("aft", "wdpo"), ("base", "vft")])
    assert list(comp.contrasts) == ["aft - vft", "vft - base"]
    c = comp.contrasts["aft - vft"]
    assert c["answer_acc"].diff == pytest.approx(2.5 / 6) and c["answer_acc"].p_value == pytest.approx(0.25)
    assert c["nll"].diff == pytest.approx(-0.4) and c["nll"].p_value == pytest.approx(1 / 32)
    # vft - base: answer p 0.5 (q1, q4), n_tokens d = (-40, -30, -20, -10, 0, 10): not all one sign.
    assert comp.contrasts["vft - base"]["answer_acc"].p_value == pytest.approx(0.5)
    # The family is the contrasts' own tests, not the 8 baseline tests: gen_len's Holm factor counts them.
    n = sum(d.p_value is not None for per in comp.contrasts.values() for d in per.values())
    ps = sorted(d.p_value for per in comp.contrasts.values() for d in per.values() if d.p_value is not None)
    assert c["gen_len"].p_holm == pytest.approx(min(1.0, ps[0] * n))
    assert comp.diffs["aft"]["gen_len"].p_holm == pytest.approx(0.25)  # the baseline family is unchanged
    assert comp.as_dict()["contrasts"]["aft - vft"]["answer_acc"]["diff"] == pytest.approx(2.5 / 6)
    assert "| aft − vft |" in diffs_table(comp.as_dict())


def test_one_seed_each_is_exact_mcnemar(tmp_path):
    comp = compare({"vft": {0: make_eval_dir(tmp_path, "vft", 0)}, "aft": {0: make_eval_dir(tmp_path, "aft", 0)}},
                   n_boot=500)
    d = comp.diffs["aft"]["answer_acc"]
    assert (d.test, d.a_only, d.b_only, d.p_value) == ("mcnemar_exact", 0, 2, 0.5)
    assert comp.step is None and comp.models["aft"]["answer_acc"].interval == "bootstrap"


def test_refuses_different_question_sets(tmp_path):
    dirs = {"vft": {0: make_eval_dir(tmp_path, "vft", 0)},
            "aft": {0: make_eval_dir(tmp_path, "aft", 0, ids=["q1", "q2", "q3", "q4", "q5", "q7"])}}
    with pytest.raises(ValueError, match=r"different questions.*1 missing \('q6'\).*1 extra \('q7'\)"):
        compare(dirs, n_boot=100)
    seeds = {"vft": {0: make_eval_dir(tmp_path / "b", "vft", 0),
                     1: make_eval_dir(tmp_path / "b", "vft", 1, ids=["q1", "q2", "q3", "q4", "q5", "q9"])}}
    with pytest.raises(ValueError, match="'vft' seed 1"):
        compare(seeds, n_boot=100)


def test_old_runs_fall_back_to_metrics_json(tmp_path):
    """No assessment.jsonl / nll.jsonl and generations without degenerate/no_answer/near_miss: those
    metrics come from metrics.json without interval or test; answer_acc keeps both."""
    dirs = {"vft": {0: make_eval_dir(tmp_path, "vft", 0)},
            "aft": {0: make_eval_dir(tmp_path, "aft", 0, new_fields=False)}}
    comp = compare(dirs, n_boot=500)
    aft = comp.models["aft"]
    assert aft["answer_acc"].source == "records" and aft["answer_acc"].low is not None
    deg = aft["degenerate_rate"]
    assert (deg.source, deg.value, deg.low, deg.interval) == ("metrics.json", 0.5, None, None)
    assert aft["assessment_acc"].source == "metrics.json" and aft["assessment_acc"].value == pytest.approx(6.5 / 8)
    assert (aft["assessment_acc"].n_questions, aft["assessment_acc"].n_pairs) == (4, 8)
    assert aft["no_answer_rate"].source == "none" and aft["no_answer_rate"].value is None
    d = comp.diffs["aft"]
    assert d["degenerate_rate"].diff == 0.5 and d["degenerate_rate"].p_value is None
    assert "not tested" in d["degenerate_rate"].note and d["answer_acc"].test == "mcnemar_exact"
    no_records = compare({"vft": {0: make_eval_dir(tmp_path / "x", "vft", 0, per_question=False)}}, n_boot=100)
    assert no_records.models["vft"]["answer_acc"].source == "metrics.json"


def test_malformed_records_are_named(tmp_path):
    d = make_eval_dir(tmp_path, "vft", 0)
    rows = [json.loads(x) for x in (d / "generations.jsonl").read_text().splitlines()]
    del rows[2]["degenerate"]
    write_jsonl(d / "generations.jsonl", rows)
    with pytest.raises(ValueError, match=r"generations.jsonl:3: field 'degenerate' is missing"):
        compare({"vft": {0: d}}, n_boot=100)
    write_jsonl(d / "generations.jsonl", rows[:2] + [rows[0]])
    with pytest.raises(ValueError, match=r"generations.jsonl:3: question id 'q1' appears again"):
        compare({"vft": {0: d}}, n_boot=100)
    d2 = make_eval_dir(tmp_path, "aft", 0)
    write_jsonl(d2 / "assessment.jsonl", [{"id": "q1", "pairs": 1, "right": 2}])
    with pytest.raises(ValueError, match=r"assessment.jsonl:1: field 'right' = 2.0 must lie in \[0, pairs"):
        compare({"aft": {0: d2}}, baseline="aft", n_boot=100)
    with pytest.raises(ValueError, match="baseline 'vft' is not among"):
        compare({"aft": {0: d2}}, n_boot=100)


def test_results_files_carry_the_intervals(dirs, tmp_path):
    out = tmp_path / "out"
    (out / "seed0" / "vft").mkdir(parents=True)  # the per-seed layout: sizes from the baseline's first seed
    (out / "seed0" / "vft" / "data_split.json").write_text(json.dumps({"split": {"source": "gsm_symbolic",
                                                                                 "n_train": 64}}))
    res = collect_results(out, dirs, timings={"vft": 1.0}, sizes={}, wall=2.0, n_boot=2000,
                          setting={"seeds": [0, 1], "gold_as_chosen": False})
    table = write_results(out, res)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    aft = saved["comparison"]["models"]["aft"]
    assert set(aft["metrics"]["answer_acc"]) >= {"value", "low", "high", "n_questions", "n_seeds", "per_seed"}
    assert aft["vs_baseline"]["answer_acc"]["p_value"] == pytest.approx(0.25)
    assert saved["methods"]["aft"]["answer_acc"] == pytest.approx(0.75) and saved["base"]["answer_acc"] == 0.0
    assert saved["answer_acc_before"] == 0.0 and saved["answer_acc_after"] == pytest.approx(1 / 3)
    assert saved["eval_examples"] == 6 and saved["model"] == "tiny-llama"
    assert (saved["data"], saved["train_examples"], saved["setting"]["seeds"]) == ("gsm_symbolic", 64, [0, 1])
    md = (out / "results.md").read_text()
    lo, hi = aft["metrics"]["answer_acc"]["low"], aft["metrics"]["answer_acc"]["high"]
    assert f"| aft | 2 | 0.750 [{lo:.3f}, {hi:.3f}] |" in md
    d = aft["vs_baseline"]["answer_acc"]
    assert f"+0.417 [{d['low']:.3f}, {d['high']:.3f}], p = 0.25" in md and "| vft − base | +0.333 [" in md
    assert "8 paired tests against vft" in md and "Holm" in md and "none stays below 0.05" in md
    assert "cannot be told apart from noise" in md and "candidate pairs" in md
    assert all(part in md for part in table.split("\n\n"))
    assert md.startswith("# lnrl results: tiny-llama on gsm_symbolic") and '"gold_as_chosen": false' in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_old_call_shape(tmp_path):
    """collect_results(out, ["vft", ...]) reads <out>/eval/base and <out>/eval/<name> as one seed each."""
    out = tmp_path / "demo"
    (out / "eval").mkdir(parents=True)
    for name in ("base", "vft", "aft"):
        make_eval_dir(tmp_path, name, 0).rename(out / "eval" / name)
    res = collect_results(out, ["vft", "aft"], timings={}, sizes={}, wall=0.0, n_boot=300)
    assert list(res["methods"]) == ["vft", "aft"] and res["comparison"]["models"]["aft"]["seeds"] == ["single"]
    assert res["comparison"]["models"]["aft"]["vs_baseline"]["answer_acc"]["test"] == "mcnemar_exact"
    write_results(out, res)
    assert "(no CI)" not in (out / "results.md").read_text()
