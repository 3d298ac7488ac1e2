"""eval.samples: pass@1, pass@k and maj@k from k sampled completions, against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import lnrl.evaluation.samples as samples_mod
from lnrl.data.records import Example
from lnrl.evaluation import SampleSpec, evaluate_model, sample_accuracy
from lnrl.generation import Generation
from lnrl.models import load_model, load_tokenizer
from lnrl.utils import PACKAGE_DIR

# n = 4 samples per question, k = 3. (text, truncated) per sample.
CASES = [
    # 72 and 72.0 agree, 1,000 does not: c = 2. maj@3 over [72, 72.0, 70]: 72 (two votes) -> right.
    ("q0", "72", [("#### 72", False), ("#### 72.0", False), ("The answer is 70", False), ("#### 1,000", False)]),
    # c = 2 (1,000 == 1000). maj@3 over [5, 1000, 6]: a three-way tie goes to the first seen, 5 -> wrong.
    ("q1", "1000", [("#### 5", False), ("#### 1,000", False), ("#### 6", False), ("#### 1000", False)]),
    # c = 0: no answer; a truncated text's last number is no answer (not graded, no vote). maj@3 over
    # [None, None, 4]: 4 -> wrong (were the truncated "3" a vote, 3 and 4 would tie and 3 would win).
    ("q2", "3", [("nothing here", False), ("it is 3", True), ("#### 4", False), ("#### 4", False)]),
    # c = 1. maj@3 over [9, 8, 9]: 9 -> wrong.
    ("q3", "8", [("#### 9", False), ("#### 8", False), ("#### 9", False), ("#### 7", False)]),
]
# pass@3 from n = 4: 1 - C(4 - c, 3) / C(4, 3): c = 2 -> 1 - 0/4 = 1; c = 1 -> 1 - 1/4 = 0.75; c = 0 -> 0.
PASS_1 = [0.5, 0.5, 0.0, 0.25]
PASS_K = [1.0, 1.0, 0.0, 0.75]
MAJ_K = [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def examples() -> list[Example]:
    return [Example(qid, f"question {qid}", f"#### {a}", a, "test") for qid, a, _ in CASES]


def fake_generate(calls: list):
    def generate(model, tokenizer, questions, **kw):
        calls.append(kw)
        by_q = {f"question {qid}": said for qid, _, said in CASES}
        return [[Generation(t, 7, tr) for t, tr in by_q[q]][: kw["num_return_sequences"]] for q in questions]
    return generate


def test_pass_and_majority_from_known_samples(tok, monkeypatch):
    calls = []
    monkeypatch.setattr(samples_mod, "generate", fake_generate(calls))
    spec = SampleSpec(k=3, n=4, temperature=0.7, top_p=0.9, top_k=20, seed=5)
    metrics, records = sample_accuracy(object(), tok, examples(), spec, max_new_tokens=33, batch_size=2,
                                       system_prompt="Be brief.", progress=False)

    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("num_return_sequences", "do_sample", "temperature", "top_p", "top_k", "seed",
                                     "max_new_tokens", "batch_size", "system_prompt")} == {
        "num_return_sequences": 4, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 5,
        "max_new_tokens": 33, "batch_size": 2, "system_prompt": "Be brief."}
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert [r["correct"] for r in records] == [[True, True, False, False], [False, True, False, True],
                                               [False, False, False, False], [False, True, False, False]]
    assert records[2]["preds"] == [None, "3", "4", "4"] and records[2]["votes"] == [None, None, "4", "4"]
    assert [r["majority"] for r in records] == ["72", "5", "4", "9"]
    assert [r["pass_at_1"] for r in records] == PASS_1
    assert [r["pass_at_k"] for r in records] == PASS_K
    assert [r["maj_at_k"] for r in records] == MAJ_K
    assert records[0]["completions"][1] == "#### 72.0" and records[2]["truncated"] == [False, True, False, False]
    assert metrics == pytest.approx({"val/pass@1": 1.25 / 4, "val/pass@k": 2.75 / 4, "val/maj@k": 0.25,
                                     "val/samples_k": 3.0, "val/samples_n": 4.0, "val/samples_questions": 4.0})


def test_n_defaults_to_k(tok, monkeypatch):
    """n = k = 4: pass@4 is "some sample is correct"; maj@4 votes all four (q1: 1000 twice now wins)."""
    calls = []
    monkeypatch.setattr(samples_mod, "generate", fake_generate(calls))
    metrics, records = sample_accuracy(object(), tok, examples(), SampleSpec.from_config({"k": 4}), progress=False)
    assert calls[0]["num_return_sequences"] == 4
    assert [r["pass_at_k"] for r in records] == [1.0, 1.0, 0.0, 1.0]
    assert [r["maj_at_k"] for r in records] == [1.0, 1.0, 0.0, 0.0]
    assert metrics["val/samples_n"] == metrics["val/samples_k"] == 4.0


def test_spec_from_config_checks_each_key():
    assert SampleSpec.from_config(None) is None
    assert SampleSpec.from_config({"k": None, "temperature": 0.8}) is None  # the shipped default: off
    got = SampleSpec.from_config(OmegaConf.create({"k": 4, "n": None, "temperature": 1, "top_p": 0.9}))
    assert got == SampleSpec(k=4, temperature=1, top_p=0.9)
    for bad, match in [({"k": 0}, r"eval.samples.k=0; expected an integer >= 1"),
                       ({"k": 4, "n": 2}, r"eval.samples.n=2; expected an integer >= 4"),
                       ({"k": 2, "temperature": 0}, r"eval.samples.temperature=0"),
                       ({"k": 2, "top_p": 1.5}, r"eval.samples.top_p=1.5"),
                       ({"k": 2, "topp": 0.9}, r"unknown key\(s\) \['topp'\]"),
                       (8, r"eval.samples=8; expected a mapping")]:
        with pytest.raises(ValueError, match=match):
            SampleSpec.from_config(bad)


def test_shipped_config_defaults_are_the_spec_defaults():
    """conf/eval/default.yaml's samples block and SampleSpec give the same defaults (two homes, kept equal)."""
    shipped = yaml.safe_load((Path(PACKAGE_DIR) / "conf" / "eval" / "default.yaml").read_text())["samples"]
    assert shipped.pop("k") is None
    assert shipped == {f: getattr(SampleSpec(k=1), f) for f in shipped}
    assert set(shipped) | {"k"} == set(SampleSpec.__dataclass_fields__)


def test_tiny_model_samples_are_k_per_question_and_seeded(tok):
    model = load_model({"source": "tiny"}, tok)
    exs = examples()[:2]
    spec = SampleSpec(k=2, n=3, seed=1)
    first = evaluate_model(model, tok, exs, max_new_tokens=4, batch_size=2, samples=spec, progress=False)
    again = evaluate_model(model, tok, exs, max_new_tokens=4, batch_size=1, samples=spec, progress=False)
    other = evaluate_model(model, tok, exs, max_new_tokens=4, batch_size=2, samples=SampleSpec(k=2, n=3, seed=2),
                           progress=False)
    assert [len(r["completions"]) for r in first.samples] == [3, 3]
    assert [r["completions"] for r in first.samples] == [r["completions"] for r in again.samples]
    assert [r["completions"] for r in first.samples] != [r["completions"] for r in other.samples]
    assert first.metrics["val/samples_k"] == 2 and "val/answer_acc" in first.metrics  # on top of the chat eval
