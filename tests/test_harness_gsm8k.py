"""lm-evaluation-harness ``gsm8k`` protocol: prompt, stop sequences, both filters, exact match.

Every expected value below is derived by hand from the harness's patterns (lm_eval/tasks/gsm8k/
gsm8k.yaml, docs/evaluation_protocols.md):

- strict-match: the FIRST match of ``#### (\\-?[0-9\\.\\,]+)`` (exactly "#### " then digits, ".",
  "," with an optional leading "-"), group 1, stripped; "[invalid]" when there is none.
- flexible-extract: the LAST match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, its non-empty group,
  stripped. At each position the first alternative (2+ chars of "$0-9.,") is tried before the
  second (an integer), so "5." is one token but a lone "5" comes from the second alternative.
- exact_match: on both sides delete ",", then "$", then everything up to the last "#### ", then a
  final "."; lower-case; compare strings.
"""

from __future__ import annotations

import pytest

from lnrl.verify.harness_gsm8k import (
    FEWSHOT,
    FEWSHOT_SEED,
    INVALID,
    STOP,
    cut_at_stop,
    exact_match,
    fewshot_indices,
    fewshot_prompt,
    flexible_extract,
    normalize,
    prompts,
    score,
    strict_match,
)

GOLD_72 = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

# (name, generation (already cut at the stop sequences), gold, strict, flexible, strict ok, flexible ok)
CASES = [
    # Matches "48" "2" "24" "48" "24" "72"; the "." after "May" and "clips" stand alone (a 1-char
    # run is not the first alternative and has no digit for the second).
    ("clean_hashes", "She sold 48/2 = 24 in May.\nShe sold 48+24 = 72 in all.\n#### 72", GOLD_72,
     "72", "72", True, True),
    ("no_hashes", "She sold 72 clips in total", "72", INVALID, "72", False, True),
    # "72." is one run (first alternative), then "3" is the last match.
    ("answer_not_last", "The answer is 72. She had 3 boxes left", "72", INVALID, "3", False, False),
    # strict: the character after "#### " is "$", not in [-0-9.,] -> no match.
    # flexible: "$1,000." is one run of [$0-9.,]; normalise: "$1000." -> "1000." -> "1000".
    ("dollars_after_hashes", "It costs $1,000.\n#### $1,000.", "#### 1000", INVALID, "$1,000.", False, True),
    ("dollars_sentence", "The total cost is $1,000.", "1000", INVALID, "$1,000.", False, True),
    # flexible: at "-" the first alternative needs 2 chars after the sign ("5" is one) -> fails;
    # the second gives "-5".
    ("negative", "It dropped to -5 degrees.\n#### -5", "#### -5", "-5", "-5", True, True),
    ("decimal", "Each costs 2.50 dollars, half is 1.25.\n#### 1.25", "1.25", "1.25", "1.25", True, True),
    # String comparison: "2.50" != "2.5" although the numbers are equal.
    ("decimal_trailing_zero", "#### 2.50", "2.5", "2.50", "2.50", False, False),
    # strict stops at the space; flexible: "clips." has a lone "." -> last match is "72".
    ("text_after_answer", "#### 72 clips. I hope this helps!", "72", "72", "72", True, True),
    # strict keeps the final "." ([0-9.,]+); normalise removes it.
    ("period_after_hashes", "#### 72.", "72", "72.", "72.", True, True),
    ("no_number", "I do not know the answer.", "72", INVALID, INVALID, False, False),
    # "72," is a run; "..." is also a run of [$0-9.,] (no digit needed) and is the last match;
    # normalise("...") = ".." (only the final "." goes) != "72".
    ("ellipsis", "The answer is 72, I think...", "72", INVALID, "...", False, False),
    # "3," "4," are runs, "5" an integer, "12" the last match.
    ("list_of_numbers", "He bought 3, 4, and 5 apples, so 12", "12", INVALID, "12", False, True),
    # strict takes the FIRST "####", flexible the last number.
    ("two_hashes", "#### 10\nWait, let me recheck.\n#### 12", "12", "10", "12", False, True),
    # strict needs "#### " with exactly one space before the number.
    ("hashes_no_space", "####72", "72", INVALID, "72", False, True),
    ("hashes_two_spaces", "####  72", "72", INVALID, "72", False, True),
    ("thousands_after_hashes", "#### 5,000", "5000", "5,000", "5,000", True, True),
    # "-" in "8-5" is taken as a sign: matches "3", "8", "-5" -> the last is "-5".
    ("minus_as_sign", "So she has 3 left (8-5)", "3", INVALID, "-5", False, False),
    # "5." is a 2-char run (first alternative); normalise drops the final "."
    ("single_digit_period", "The answer is 5.", "5", INVALID, "5.", False, True),
    ("negative_dollars", "She lost -$20.", "-20", INVALID, "-$20.", False, True),
    ("negative_decimal", "#### -3.5", "-3.5", "-3.5", "-3.5", True, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_filters_and_exact_match(case):
    _, text, gold, strict, flexible, strict_ok, flex_ok = case
    assert strict_match(text) == strict
    assert flexible_extract(text) == flexible
    assert exact_match(strict, gold) is strict_ok
    assert exact_match(flexible, gold) is flex_ok
    assert score(text, gold) == {"strict-match": float(strict_ok), "flexible-extract": float(flex_ok)}


def test_normalize_gold_and_prediction():
    """The full gold keeps only what follows the last "#### "; "$", "," and one final "." go."""
    assert normalize(GOLD_72) == "72"
    assert normalize("$1,000.") == "1000"
    assert normalize("5..") == "5."  # only the last "." is removed
    assert normalize(INVALID) == "[invalid]"  # never equal to a number
    assert normalize("ABC") == "abc"  # ignore_case


def test_stop_sequences_cut_the_next_question():
    """A continuation that invents the next few-shot item is scored on its first answer only."""
    raw = "#### 72\n\nQuestion: Tom has 3 apples. How many?\nAnswer: 3"
    assert cut_at_stop(raw) == "#### 72\n\n"
    assert flexible_extract(raw) == "3"  # uncut, the invented answer would win
    assert score(raw, "72") == {"strict-match": 1.0, "flexible-extract": 1.0}
    assert cut_at_stop("21 apples</s>junk<|im_end|>") == "21 apples"
    assert STOP == ("Question:", "</s>", "<|im_end|>")


def test_fewshot_prompt_format():
    """Shots "Question: q\\nAnswer: a" separated by a blank line; the prompt ends with "Answer:"."""
    shots = [("What is 1+1?", "1+1 = <<1+1=2>>2\n#### 2"), ("What is 2*3?", "2*3 = 6\n#### 6")]
    expected = (
        "Question: What is 1+1?\nAnswer: 1+1 = <<1+1=2>>2\n#### 2\n\n"
        "Question: What is 2*3?\nAnswer: 2*3 = 6\n#### 6\n\n"
        "Question: How many legs do 3 cats have?\nAnswer:"
    )
    assert fewshot_prompt("How many legs do 3 cats have?", shots) == expected
    assert fewshot_prompt("Q?", []) == "Question: Q?\nAnswer:"
    with pytest.raises(ValueError, match="shot 0"):
        fewshot_prompt("Q?", [("only a question",)])


# Shots the harness's own sampler (lm_eval/api/samplers.py ContextSampler, commit 4e7e0d4, run once
# on GSM8K's 7473 train documents after set_rnd(1234)) gave the first three test documents.
HARNESS_FIRST_SHOTS = [
    [6374, 3610, 957, 61, 742],
    [7462, 6610, 4769, 286, 5501],
    [5677, 687, 806, 6279, 2905],
]

def test_fewshot_indices_replay_the_harness_sampler():
    assert (FEWSHOT, FEWSHOT_SEED) == (5, 1234)
    idx = fewshot_indices(7473, 3)
    assert idx == HARNESS_FIRST_SHOTS
    # Question i gets the (i+1)-th draw of one generator: a prefix of a longer run is the same.
    assert fewshot_indices(7473, 10)[:3] == idx


def test_prompts_draw_shots_from_train_pairs():
    train = [(f"q{i}", f"a{i}\n#### {i}") for i in range(7473)]
    p = prompts(["What?"], train)[0]
    first = HARNESS_FIRST_SHOTS[0]
    shot0 = f"Question: q{first[0]}\nAnswer: a{first[0]}\n#### {first[0]}\n\n"
    assert p.startswith(shot0 + f"Question: q{first[1]}\nAnswer:")
    assert p.count("Question: ") == FEWSHOT + 1
    assert p.endswith("\n\nQuestion: What?\nAnswer:")
