"""encode / encode_prompt: chat template, completion mask, overlong policies.

Expected ids are derived independently: the chat template rendered as text and tokenized as a
whole (SmolLM2's template is all special tokens and plain text, so both paths must agree), and
the completion tokenized on its own with eos appended.
"""

from __future__ import annotations

import pytest

from lnrl.data import encode, encode_prompt
from lnrl.models import load_tokenizer

Q = "A kid has 17 books. His friend has 8 fewer books than he has. How many books do they have together?"
SOL = "His friend has 17 - 8 = 9 books.\nTogether, they have 17 + 9 = 26 books.\n#### 26"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def template_ids(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def test_prompt_is_the_chat_template(tok):
    ids = encode_prompt(tok, Q)
    assert ids == template_ids(tok, [{"role": "user", "content": Q}])
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")
    custom = tok.decode(encode_prompt(tok, Q, system_prompt="Solve step by step."))
    assert custom.startswith("<|im_start|>system\nSolve step by step.<|im_end|>") and "SmolLM" not in custom


def test_mask_marks_exactly_the_completion(tok):
    row = encode(tok, Q, SOL, max_length=512)
    prompt = encode_prompt(tok, Q)
    completion = tok(SOL + "<|im_end|>", add_special_tokens=False).input_ids
    assert row["input_ids"] == prompt + completion
    assert row["completion_mask"] == [0] * len(prompt) + [1] * len(completion)
    first = row["completion_mask"].index(1)
    assert first == len(prompt)
    assert tok.decode(row["input_ids"][first]) == "His"  # the solution's first word, nothing of the prompt
    assert tok.decode(row["input_ids"][first - 1]) == "\n"  # ... and the token before it ends the prompt
    assert row["input_ids"][-1] == tok.eos_token_id == 2  # the model learns to stop
    assert sum(row["completion_mask"]) == len(completion)


def test_truncate_cuts_completion_from_the_right(tok):
    prompt = encode_prompt(tok, Q)
    full = encode(tok, Q, SOL, max_length=512)
    stats: dict = {}
    row = encode(tok, Q, SOL, max_length=len(prompt) + 5, stats=stats)
    assert row["input_ids"] == full["input_ids"][: len(prompt) + 5]
    assert sum(row["completion_mask"]) == 5 and row["input_ids"][-1] != tok.eos_token_id
    assert stats == {"overlong_truncated": 1}
    # exactly fitting is not overlong
    assert encode(tok, Q, SOL, max_length=len(full["input_ids"]), stats=stats) == full
    assert stats == {"overlong_truncated": 1}


def test_prompt_alone_too_long_is_dropped_even_under_truncate(tok):
    stats: dict = {}
    n_prompt = len(encode_prompt(tok, Q))
    assert encode(tok, Q, SOL, max_length=n_prompt, stats=stats) is None
    assert encode(tok, Q, SOL, max_length=n_prompt - 10, stats=stats) is None
    assert stats == {"prompt_too_long": 2}
    assert sum(encode(tok, Q, SOL, max_length=n_prompt + 1, stats=stats)["completion_mask"]) == 1


def test_drop_policy(tok):
    stats: dict = {}
    n = len(encode(tok, Q, SOL, max_length=512)["input_ids"])
    assert encode(tok, Q, SOL, max_length=n - 1, overlong="drop", stats=stats) is None
    assert encode(tok, Q, SOL, max_length=n, overlong="drop", stats=stats) is not None
    assert stats == {"overlong_dropped": 1}
    with pytest.raises(ValueError, match="overlong"):
        encode(tok, Q, SOL, max_length=n, overlong="cut")


def test_truncated_completion_is_encoded_without_eos(tok):
    """A sample cut at max_new_tokens never produced <|im_end|>: eos=False leaves it out, nothing else changes."""
    with_eos = encode(tok, Q, SOL, 512)
    without = encode(tok, Q, SOL, 512, eos=False)
    assert with_eos["input_ids"][-1] == tok.eos_token_id and without["input_ids"] == with_eos["input_ids"][:-1]
    assert without["completion_mask"] == with_eos["completion_mask"][:-1]
