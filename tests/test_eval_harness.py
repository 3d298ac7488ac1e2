"""eval.protocol=harness_gsm8k: the harness's prompt, stop strings and scores inside lnrl's evaluation.

A scripted stub LM continues each prompt with a fixed text only when it sees exactly that prompt's
tokens, so a completion coming back proves the model was given `harness_gsm8k.prompts(...)`'s text
(encoded as the harness's HF backend encodes it). Expected scores are written out by hand from the
filter rules (docs/evaluation_protocols.md) and checked against `harness_gsm8k.score` on the uncut text.
"""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

import lnrl.evaluation.harness as harness_mod
from lnrl.callbacks import GenerationEval
from lnrl.data.records import Example
from lnrl.evaluation import evaluate_model, harness_accuracy
from lnrl.generation import Generation
from lnrl.models import load_tokenizer
from lnrl.verify import harness_gsm8k as hg
from scripted_lm import ScriptedLM as PromptScriptLM


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def stub(tok, scripts: dict[str, str], max_positions: int = 4096) -> PromptScriptLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=max_positions)
    ids = {tuple(tok(p)["input_ids"]): tok(t, add_special_tokens=False)["input_ids"] for p, t in scripts.items()}
    return PromptScriptLM(config, ids, tok.eos_token_id).eval()


# Seven training examples (the shot pool) and five held-out questions, GSM8K-style.
POOL = [Example(f"train/{i}", f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
                f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}",
                str(2 * i + 2), "test") for i in range(7)]
HELD = [Example(f"test/{i}", q, f"Some reasoning.\n#### {a}", a, "test") for i, (q, a) in enumerate([
    ("Ann buys 3 apples and then 9 more. How many apples?", "12"),
    ("A pen costs 5 dollars. What do 4 pens cost?", "20"),
    ("What is 3 + 4?", "7"),
    ("A question nobody scripted: what is 1 + 1?", "2"),
    ("Count to one hundred.", "100"),
])]
# What the stub says after each held-out question's prompt (None: nothing scripted, EOS at once).
SAID = [
    # cut before "Question:" (the model ran on into a next shot); strict 12 = gold, flexible: last number 12
    " Ann has 3 + 9 = 12 apples.\n#### 12\n\nQuestion: What is 2 + 2?\nAnswer: 4",
    # strict takes "21." (its class includes "."; normalised 21: wrong); flexible: the last number, 20 (right)
    " 5 * 4 = 20, not #### 21. So the pens cost 20",
    # cut before "</s>" (a stop string, plain text for this tokenizer): no "####" left; flexible 7 (right)
    " It is 7</s> and then #### 8",
    None,
    # never stops: hits max_new_tokens; strict finds nothing; flexible: the last "1" (wrong against 100)
    " 1" * 80,
]
EXPECTED = [(True, True), (False, True), (False, True), (False, False), (False, False)]  # (strict, flexible)


def test_prompts_stops_and_scores_are_the_harness_ones(tok):
    prompts = hg.prompts([e.question for e in HELD], [(e.question, e.solution) for e in POOL])
    model = stub(tok, {p: s for p, s in zip(prompts, SAID) if s is not None})
    metrics, records = harness_accuracy(model, tok, HELD, POOL, max_new_tokens=64, batch_size=2, progress=False)

    # The model was given exactly the harness's prompt text, encoded with the tokenizer's defaults.
    assert sorted(map(tuple, model.prompts)) == sorted(tuple(tok(p)["input_ids"]) for p in prompts)
    assert all(not r["prompt_truncated"] and r["prompt_tokens"] == len(tok(p)["input_ids"])
               for r, p in zip(records, prompts))
    assert [r["id"] for r in records] == [e.id for e in HELD]
    shot_idx = hg.fewshot_indices(len(POOL), len(HELD))
    assert [r["shots"] for r in records] == [[POOL[j].id for j in idx] for idx in shot_idx]
    # Completions are cut before the first stop string.
    assert records[0]["completion"] == " Ann has 3 + 9 = 12 apples.\n#### 12\n\n"
    assert records[2]["completion"] == " It is 7"
    assert records[3]["completion"] == ""
    assert [r["completion"] for r in records[:4]] == [hg.cut_at_stop(s or "") for s in SAID[:4]]
    assert records[4]["completion"] == tok.decode(tok(SAID[4], add_special_tokens=False)["input_ids"][:64])
    # Generation itself stopped at the stop string (fewer tokens than the script), not at the token limit.
    assert records[0]["n_tokens"] < len(tok(SAID[0], add_special_tokens=False)["input_ids"])
    assert [r["truncated"] for r in records] == [False, False, False, False, True]
    assert records[4]["n_tokens"] == 64
    # Scores: the hand-derived ones, and harness_gsm8k.score of the uncut text against the gold solution.
    assert [(r["strict_match"], r["flexible_extract"]) for r in records] == EXPECTED
    for r, s, e in zip(records, SAID, HELD):
        want = hg.score(s or "", e.solution)
        assert (float(r["strict_match"]), float(r["flexible_extract"])) == (want["strict-match"],
                                                                              want["flexible-extract"])
    assert [r["strict_pred"] for r in records] == ["12", "21.", hg.INVALID, hg.INVALID, hg.INVALID]
    assert [r["flexible_pred"] for r in records] == ["12", "20", "7", hg.INVALID, "1"]
    assert [r["gold"] for r in records] == ["12", "20", "7", "2", "100"]
    assert metrics == {"val/harness_strict_match": 1 / 5, "val/harness_flexible_extract": 3 / 5,
                       "val/harness_questions": 5.0}


def test_uses_generate_with_prompt_ids_and_stop_once_it_takes_them(tok, monkeypatch):
    """The rewritten lnrl.generation.generate (prompt_ids=, stop=) replaces the private fallback."""
    prompts = hg.prompts([e.question for e in HELD[:3]], [(e.question, e.solution) for e in POOL])
    calls = []

    def generate(model, tokenizer, questions, *, prompt_ids=None, stop=None, max_new_tokens=256, batch_size=16,
                 desc="", progress=True, **kw):
        calls.append({"questions": questions, "prompt_ids": prompt_ids, "stop": stop, "max_new_tokens": max_new_tokens})
        return [[Generation(s.strip(), 5, False)] for s in SAID[:3]]  # uncut: the caller cuts again

    monkeypatch.setattr(harness_mod, "generate", generate)
    monkeypatch.setattr(harness_mod, "_fallback_generate", lambda *a, **k: pytest.fail("fallback used"))
    _, records = harness_accuracy(object(), tok, HELD[:3], POOL, max_new_tokens=32, progress=False)
    assert calls == [{"questions": prompts, "prompt_ids": [tok(p)["input_ids"] for p in prompts],
                      "stop": list(hg.STOP), "max_new_tokens": 32}]
    assert [r["completion"] for r in records] == [hg.cut_at_stop(s.strip()) for s in SAID[:3]]
    assert [(r["strict_match"], r["flexible_extract"]) for r in records] == EXPECTED[:3]


def test_long_prompts_lose_their_first_tokens_as_in_the_harness(tok):
    """Context 300, 64 new tokens: a prompt keeps its last 236 tokens and is flagged."""
    model = stub(tok, {}, max_positions=300)
    _, records = harness_accuracy(model, tok, HELD[:2], POOL, max_new_tokens=64, progress=False)
    prompts = hg.prompts([e.question for e in HELD[:2]], [(e.question, e.solution) for e in POOL])
    assert all(len(tok(p)["input_ids"]) > 236 for p in prompts)
    assert [r["prompt_tokens"] for r in records] == [236, 236]
    assert all(r["prompt_truncated"] for r in records)
    assert sorted(map(tuple, model.prompts)) == sorted(tuple(tok(p)["input_ids"][-236:]) for p in prompts)


def test_gold_is_the_solution_or_the_answer():
    """The harness scores against the full "... #### N" answer; a source without that line gives its answer."""
    assert harness_mod.gold_text(HELD[0]) == "Some reasoning.\n#### 12"
    assert harness_mod.gold_text(Example("m/1", "q", "So x = 5. The answer is: 5", "5", "m")) == "5"


def test_evaluate_model_runs_the_chosen_protocol(tok):
    prompts = hg.prompts([e.question for e in HELD], [(e.question, e.solution) for e in POOL])
    model = stub(tok, {p: s for p, s in zip(prompts, SAID) if s is not None})
    result = evaluate_model(model, tok, HELD, max_new_tokens=64, batch_size=4, protocol="harness_gsm8k",
                            shots_from=POOL, progress=False)
    assert result.generations is None and result.samples is None  # no chat-protocol generations
    assert "val/answer_acc" not in result.metrics
    assert result.metrics["val/harness_flexible_extract"] == pytest.approx(3 / 5)
    assert [(r["strict_match"], r["flexible_extract"]) for r in result.harness] == EXPECTED
    assert len(result.nll) == len(HELD)  # generation-free metrics are computed as under the chat protocol


def test_bad_settings_name_their_key(tok):
    with pytest.raises(ValueError, match=r"eval.protocol='harness'; expected one of chat, harness_gsm8k"):
        evaluate_model(object(), tok, HELD, protocol="harness")
    with pytest.raises(ValueError, match=r"eval.protocol='lm_eval'"):
        GenerationEval(protocol="lm_eval")  # fails when the run is configured, not after training
    with pytest.raises(ValueError, match=r"eval.near_miss_from"):
        evaluate_model(object(), tok, HELD, protocol="harness_gsm8k", shots_from=POOL, near_miss_ids={"x"})
    with pytest.raises(ValueError, match=r"5 shots per question need a training split of at least 5"):
        harness_accuracy(object(), tok, HELD, POOL[:4])
