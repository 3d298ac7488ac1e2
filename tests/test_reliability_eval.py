"""`val/answer_acc` against a value known by construction (issue 10: the suite never checked a non-zero accuracy).

A stub causal LM whose greedy output is a fixed script per prompt: it keeps the tokens it has seen in its
KV cache (one layer, keys = token ids, values = 1 for real tokens, 0 for padding), so it works with any
generation loop that drives a transformers cache, whatever order or batches it runs the prompts in.
Questions have different lengths and are given longest first: generation sorts prompts by length, so a
result mapped back to the wrong question would grade one question's answer against another's.
"""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from lnrl.data.records import Example
from lnrl.data.tokenize import encode_prompt
from lnrl.evaluation import answer_accuracy
from lnrl.models import load_tokenizer
from scripted_lm import ScriptedLM


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def test_answer_accuracy_grades_each_question_against_its_own_answer(tok):
    # (question, gold answer, what the model answers); the longest question comes first.
    cases = [
        ("A farmer has 12 cows and buys 30 more, then sells 5 of them at the market on Sunday. How many cows "
         "does the farmer have now?", "37", "37"),
        ("Tom reads 6 pages a day for 7 days. How many pages does he read?", "42", "41"),
        ("What is 15 + 27 + 3?", "45", "45"),
        ("What is 9 - 4?", "5", "6"),
        ("2 * 3?", "6", "6"),
    ]
    examples = [Example(id=f"q{i}", question=q, solution=f"#### {a}", answer=a, source="test")
                for i, (q, a, _) in enumerate(cases)]
    lengths = [len(encode_prompt(tok, e.question)) for e in examples]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(lengths)
    texts = [f"The answer is {said}.\n#### {said}" for _, _, said in cases]
    scripts = {tuple(encode_prompt(tok, e.question)): tok(t, add_special_tokens=False).input_ids
               for e, t in zip(examples, texts)}
    config = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1)
    model = ScriptedLM(config, scripts, tok.eos_token_id).eval()

    metrics, records = answer_accuracy(model, tok, examples, max_new_tokens=32, batch_size=2, progress=False)

    assert [r["id"] for r in records] == [e.id for e in examples]
    assert [r["completion"] for r in records] == texts  # each question got its own generation back
    assert [r["correct"] for r in records] == [True, False, True, False, True]
    assert metrics["val/answer_acc"] == pytest.approx(3 / 5)
    assert not any(r["truncated"] for r in records)
