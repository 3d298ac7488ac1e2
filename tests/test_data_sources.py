"""Sources: gsm_symbolic split by template, gsm8k on the shared file, metamathqa and jsonl on tmp files,
and the error paths (file, line, field; skip mode counts)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok

from lnrl.data import DataError, build_source
from lnrl.verify.answers import extract_answer

SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
SUFFIX = " Give the result as your final answer. Do not include units."


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- gsm_symbolic

@pytest.fixture(scope="module")
def symbolic():
    return build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 80, "n_eval": 20, "eval_fraction": 0.2})


def test_gsm_symbolic_templates_are_disjoint_and_cover_tasks_ok(symbolic):
    info = symbolic.info
    train_t, eval_t = set(info["train_templates"]), set(info["eval_templates"])
    assert not train_t & eval_t and train_t | eval_t == set(tasks_ok)
    assert len(eval_t) == round(0.2 * len(tasks_ok))
    assert {e.meta["template"] for e in symbolic.train} <= train_t
    assert {e.meta["template"] for e in symbolic.eval} <= eval_t
    assert len(symbolic.train) == info["n_train"] == 80 and len(symbolic.eval) == info["n_eval"] == 20
    assert not {e.question for e in symbolic.train} & {e.question for e in symbolic.eval}


def test_gsm_symbolic_examples_are_well_formed(symbolic):
    for e in symbolic.train + symbolic.eval:
        assert e.question.endswith(SUFFIX) and e.source == "gsm_symbolic"
        assert e.solution.endswith(f"\n#### {e.answer}") and extract_answer(e.solution) == e.answer
        assert re.fullmatch(r"-?\d+(\.\d+)?", e.answer)
        assert e.id == f"gsm_symbolic/t{e.meta['template']}/{e.meta['index']}"
    assert len({e.id for e in symbolic.train + symbolic.eval}) == 100


def test_gsm_symbolic_round_robin_spreads_examples(symbolic):
    # 80 examples over 68 training templates: every template once, 12 of them twice
    counts = Counter(e.meta["template"] for e in symbolic.train)
    assert len(counts) == 68 and sorted(Counter(counts.values()).items()) == [(1, 56), (2, 12)]


def test_gsm_symbolic_is_deterministic_in_seed(symbolic):
    again = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 80, "n_eval": 20})
    assert again.train == symbolic.train and again.eval == symbolic.eval
    # a larger n_train extends the same sequence
    more = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 100, "n_eval": 20})
    assert more.train[:80] == symbolic.train
    other = build_source({"name": "gsm_symbolic", "seed": 1, "n_train": 80, "n_eval": 20})
    assert other.info["eval_templates"] != symbolic.info["eval_templates"]


def test_gsm_symbolic_float_answer_lines_are_normalized():
    # template 25 prints "#### 16.0" where the answer is 16 (reasoning-gym quirk)
    split = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 136, "n_eval": 1})
    t25 = [e for e in split.train if e.meta["template"] == 25]
    assert t25 and all(not e.solution.endswith(".0") for e in t25)


def test_gsm_symbolic_rejects_bad_fraction():
    with pytest.raises(ValueError, match="eval_fraction"):
        build_source({"name": "gsm_symbolic", "eval_fraction": 1.0})


# ----------------------------------------------------------------------------- gsm8k

@pytest.mark.skipif(not SHARED_GSM8K.exists(),
                    reason=f"needs ../shared: the shared GSM8K training split {SHARED_GSM8K} is absent")
@pytest.mark.parametrize("strip", [False, True])
def test_gsm8k_shared_file(strip):
    split = build_source({"name": "gsm8k", "path": str(SHARED_GSM8K), "strip_calculator": strip})
    examples = split.train + split.eval
    assert len(examples) == 7473 and split.info["skipped"] == 0
    assert len(split.eval) == round(0.1 * 7473) and not {e.id for e in split.train} & {e.id for e in split.eval}
    assert all(re.fullmatch(r"-?\d+", e.answer) for e in examples)  # "#### 1,080" -> "1080"
    by_id = {e.id: e for e in examples}
    first = by_id["gsm8k/train/0"]  # line 1 of the file
    assert first.answer == "72" and first.meta["line"] == 1
    if strip:
        assert first.solution == ("Natalia sold 48/2 = 24 clips in May.\n"
                                  "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72")
        assert not any("<<" in e.solution for e in examples)
    else:
        assert first.solution.startswith("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
        assert sum("<<" in e.solution for e in examples) > 7000
    comma = [e for e in examples if "#### 1,080" in e.solution]
    assert comma and all(e.answer == "1080" for e in comma)


def test_gsm8k_local_file_eval_path_and_caps(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
            for i in range(20)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:5])
    split = build_source({"name": "gsm8k", "path": str(train), "eval_path": str(test), "n_train": 7})
    assert len(split.train) == 7 and len(split.eval) == 5 and split.info["eval_from"].startswith("eval_path")
    assert [e.id for e in split.eval] == [f"gsm8k/test/{i}" for i in range(5)]
    held = build_source({"name": "gsm8k", "path": str(train), "n_eval": 4, "seed": 3})
    assert len(held.eval) == 4 and len(held.train) == 16
    assert not {e.question for e in held.train} & {e.question for e in held.eval}
    assert held.eval == build_source({"name": "gsm8k", "path": str(train), "n_eval": 4, "seed": 3}).eval


def test_gsm8k_errors(tmp_path):
    good = {"question": "q", "answer": "1 + 1 = 2\n#### 2"}
    path = write_jsonl(tmp_path / "g.jsonl", [good, good, {"question": "q", "answer": "no final line"}, good])
    with pytest.raises(DataError, match=rf"{path}:3: field 'answer': no '#### N'"):
        build_source({"name": "gsm8k", "path": str(path)})
    path = write_jsonl(tmp_path / "g.jsonl", [good, {"question": "q", "answer": "x\n####  "}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'answer': empty final answer"):
        build_source({"name": "gsm8k", "path": str(path)})
    path = write_jsonl(tmp_path / "g.jsonl", [good, {"answer": "#### 2"}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'question': missing"):
        build_source({"name": "gsm8k", "path": str(path)})
    with pytest.raises(DataError, match="no such file"):
        build_source({"name": "gsm8k", "path": str(tmp_path / "absent.jsonl")})


def test_gsm8k_hub_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"nonexistent-org/no-such-set: could not load split 'train' from the hub"):
        build_source({"name": "gsm8k", "path": "nonexistent-org/no-such-set"})


# ----------------------------------------------------------------------------- metamathqa

MMQA = [
    {"query": "What is 3 times 6?", "response": "3 * 6 = 18.\nThe answer is: 18", "type": "GSM_Rephrased",
     "original_question": "Three sixes?"},
    {"query": "Compute three sixes.", "response": "We get 18. The answer is: 18", "type": "GSM_SV",
     "original_question": "Three sixes?"},
    {"query": "Simplify x+x-x+1.", "response": "It is x+1.\nThe answer is: x+1", "type": "MATH_AnsAug",
     "original_question": "Simplify"},
    {"query": "Total of 1,000 and 200?", "response": "The answer is: 1,200", "type": "GSM_AnsAug",
     "original_question": "Sum"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_metamathqa_local_files(tmp_path, fmt):
    path = tmp_path / f"mmqa.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(MMQA))
    else:
        write_jsonl(path, MMQA)
    split = build_source({"name": "metamathqa", "path": str(path), "eval_fraction": 0.0})
    assert [e.answer for e in split.train] == ["18", "18", "x+1", "1200"] and split.eval == []
    assert split.train[0].solution == MMQA[0]["response"] and split.train[0].question == MMQA[0]["query"]
    assert split.train[2].meta["type"] == "MATH_AnsAug"


def test_metamathqa_holdout_keeps_rephrasings_together(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", MMQA)
    for seed in range(6):
        split = build_source({"name": "metamathqa", "path": str(path), "n_eval": 1, "seed": seed})
        sides = {e.meta["original_question"] for e in split.eval}, {e.meta["original_question"] for e in split.train}
        assert not sides[0] & sides[1] and len(split.eval) == 1 and len(split.train) + 1 <= 4


def test_metamathqa_errors(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [MMQA[0], {"query": "q", "response": "no phrase here 12"}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'response': no 'The answer is: X'"):
        build_source({"name": "metamathqa", "path": str(path)})
    split = build_source({"name": "metamathqa", "path": str(path), "on_error": "skip", "eval_fraction": 0.0})
    assert len(split.train) == 1 and split.info["skipped"] == 1
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MMQA[:1])[:-5])
    with pytest.raises(DataError, match=rf"{path}:1: malformed JSON"):
        build_source({"name": "metamathqa", "path": str(path)})


# ----------------------------------------------------------------------------- jsonl

def test_jsonl_custom_fields(tmp_path):
    rows = [{"problem": "2+2?", "cot": "2+2=4. \\boxed{4}", "final": 4},
            {"problem": "3+3?", "cot": "3+3 is 6.\n#### 6", "final": "6"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = {"name": "jsonl", "path": str(path), "question_field": "problem", "solution_field": "cot",
           "eval_fraction": 0.0}
    extracted = build_source(cfg)  # answers from the solutions
    assert [e.answer for e in extracted.train] == ["4", "6"] and [e.id for e in extracted.train] == ["jsonl/d/0",
                                                                                                   "jsonl/d/1"]
    given = build_source({**cfg, "answer_field": "final"})
    assert [e.answer for e in given.train] == ["4", "6"] and given.train[0].solution == rows[0]["cot"]


def test_jsonl_errors_and_skip_counts(tmp_path):
    rows = ['{"question": "a", "solution": "#### 1"}', '{"question": "b", "solution": ', '{"question": "c"}',
            '{"question": "d", "solution": "no number here"}', '{"question": "e", "solution": "#### 5"}']
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        build_source({"name": "jsonl", "path": str(path)})
    split = build_source({"name": "jsonl", "path": str(path), "on_error": "skip", "eval_fraction": 0.0})
    assert [e.question for e in split.train] == ["a", "e"] and split.info["skipped"] == 3
    assert [e.id for e in split.train] == ["jsonl/d/0", "jsonl/d/4"]  # ids follow lines, not survivors
    path = write_jsonl(tmp_path / "d.jsonl", [rows[0], rows[2]])
    with pytest.raises(DataError, match=rf"{path}:2: field 'solution': missing"):
        build_source({"name": "jsonl", "path": str(path)})
    path = write_jsonl(tmp_path / "d.jsonl", [rows[0], rows[3]])
    with pytest.raises(DataError, match=rf"{path}:2: field 'solution': empty answer"):
        build_source({"name": "jsonl", "path": str(path)})
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "solution": "s", "ans": ""}])
    with pytest.raises(DataError, match=rf"{path}:1: field 'ans': empty answer"):
        build_source({"name": "jsonl", "path": str(path), "answer_field": "ans"})


def test_build_source_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="registered sources"):
        build_source({"name": "nope"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_trian'\]"):
        build_source({"name": "gsm_symbolic", "n_trian": 3})


def test_gsm_symbolic_template_subset_difficulty_and_instance_split():
    """split_by=instance: every chosen template serves both splits, with disjoint question texts and ids;
    difficulty 0.5 shrinks the numbers (the generators scale their ranges by it)."""
    easy = [4, 10, 26, 43]
    split = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 40, "n_eval": 12, "difficulty": 0.5,
                          "templates": easy, "split_by": "instance"})
    assert {e.meta["template"] for e in split.train} == set(easy) == {e.meta["template"] for e in split.eval}
    assert not {e.question for e in split.train} & {e.question for e in split.eval}
    assert not {e.id for e in split.train} & {e.id for e in split.eval}
    assert split.info["split_by"] == "instance" and split.info["difficulty"] == 0.5
    full = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 40, "n_eval": 12, "templates": easy,
                         "split_by": "instance"})
    biggest = lambda exs: max(float(x) for e in exs for x in re.findall(r"\d+(?:\.\d+)?", e.solution))  # noqa: E731
    assert biggest(split.train) < biggest(full.train)
    again = build_source({"name": "gsm_symbolic", "seed": 0, "n_train": 40, "n_eval": 12, "difficulty": 0.5,
                          "templates": easy, "split_by": "instance"})
    assert [e.question for e in again.train] == [e.question for e in split.train]  # deterministic


def test_gsm_symbolic_option_errors():
    with pytest.raises(ValueError, match="data.source.split_by='x'"):
        build_source({"name": "gsm_symbolic", "split_by": "x"})
    with pytest.raises(ValueError, match=r"data.source.templates: \[100000\]"):
        build_source({"name": "gsm_symbolic", "templates": [4, 100000]})
    with pytest.raises(ValueError, match="data.source.difficulty=0"):
        build_source({"name": "gsm_symbolic", "difficulty": 0})


def test_gsm_symbolic_generator_that_hangs_is_retried(monkeypatch):
    """A generator stuck in an endless retry loop (some are, below difficulty 1) is cut by the timeout and
    counted as a failure; the next instance is tried."""
    import lnrl.data.sources.gsm_symbolic as gs

    monkeypatch.setattr(gs, "GENERATOR_TIMEOUT_S", 0.05)
    calls = {"n": 0}
    real = {}

    def hang_once(gen):
        def wrapped(rng, difficulty):
            calls["n"] += 1
            if calls["n"] == 1:
                while True:
                    pass
            return gen(rng, difficulty)
        return wrapped

    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import GSMSymbolicDataset

    orig = GSMSymbolicDataset.generators.fget

    def patched(self):
        gens = orig(self)
        real.update(gens)
        return {t: hang_once(g) for t, g in gens.items()}

    monkeypatch.setattr(GSMSymbolicDataset, "generators", property(patched))
    split = build_source({"name": "gsm_symbolic", "templates": [4, 10], "split_by": "instance", "n_train": 2,
                          "n_eval": 2})
    assert len(split.train) == 2 and split.info["generator_failures"] == 1
