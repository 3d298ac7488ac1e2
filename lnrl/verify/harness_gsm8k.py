"""GSM8K scored the way lm-evaluation-harness's ``gsm8k`` task scores it (docs/evaluation_protocols.md).

So that an lnrl number can sit next to a published ``gsm8k`` number: the same plain-text 5-shot
prompt, the same stop sequences, the same two answer filters and the same normalisation before
exact match. Written from the harness's task config and filter/metric semantics (commit and files
in docs/evaluation_protocols.md), not from its code.

    from lnrl.verify.harness_gsm8k import prompts, score

    texts = prompts(test_questions, train_pairs)   # 5 shots per question, sampled as the harness does
    # generate greedily (the harness: do_sample false, up to 256 new tokens, stop at STOP + EOS)
    s = score(generation, gold_answer)             # {"strict-match": 1.0, "flexible-extract": 1.0}

Pieces::

    fewshot_prompt(question, shots) -> str               # shots: [(question, answer), ...]
    fewshot_indices(n_train, n_eval, k=5, seed=1234) -> list[list[int]]
    cut_at_stop(text, stop=STOP) -> str
    strict_match(text) -> str        # "#### N" -> "N", else INVALID ("[invalid]")
    flexible_extract(text) -> str    # the last number-like token, else INVALID
    normalize(text) -> str           # the harness's exact_match preprocessing
    exact_match(pred, gold) -> bool  # normalize(pred) == normalize(gold)

``gold`` may be the full GSM8K answer ("...\\n#### 72", as the harness passes it) or just "72":
the normalisation deletes everything up to the last "#### ", so both compare the same.
Exact match is string equality after normalisation: "2.50" does not match "2.5" and "72.0" does not
match "72", as in the harness (lnrl's own ``answers_match`` is the numeric comparison).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

__all__ = [
    "FEWSHOT",
    "FEWSHOT_SEED",
    "STOP",
    "INVALID",
    "STRICT_PATTERN",
    "FLEXIBLE_PATTERN",
    "IGNORE_PATTERNS",
    "FILTERS",
    "fewshot_prompt",
    "fewshot_indices",
    "prompts",
    "cut_at_stop",
    "strict_match",
    "flexible_extract",
    "normalize",
    "exact_match",
    "score",
]

# Task settings of lm_eval/tasks/gsm8k/gsm8k.yaml (version 3.0) and the harness's defaults.
FEWSHOT = 5  # num_fewshot
FEWSHOT_SEED = 1234  # the evaluator's default fewshot_random_seed
STOP = ("Question:", "</s>", "<|im_end|>")  # generation_kwargs.until; the harness adds the EOS token
INVALID = "[invalid]"  # the regex filter's fallback when nothing matches
_SHOT_SEP = "\n\n"  # fewshot_delimiter (harness default)
_TARGET_SEP = " "  # target_delimiter (harness default), between "Answer:" and the shot's answer

# The two filters' patterns, character for character (they define the protocol).
STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"  # the first match, group 1
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # the last match, its non-empty group
# exact_match's regexes_to_ignore, applied in this order to prediction and gold, then lower-case.
IGNORE_PATTERNS = (",", r"\$", r"(?s).*#### ", r"\.$")

_STRICT_RE = re.compile(STRICT_PATTERN)
_FLEXIBLE_RE = re.compile(FLEXIBLE_PATTERN)
_IGNORE_RES = tuple(re.compile(p) for p in IGNORE_PATTERNS)


def _turn(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def fewshot_prompt(question: str, shots: Sequence[tuple[str, str]]) -> str:
    """The plain-text prompt: each shot as "Question: q\\nAnswer: a" then a blank line, then the question.

    Shot answers are the full GSM8K solutions, calculator annotations ("<<48/2=24>>") and final
    "#### N" line included, as the harness uses them. The prompt ends with "Answer:" (no space).
    """
    parts = []
    for i, shot in enumerate(shots):
        if len(shot) != 2:
            raise ValueError(f"fewshot_prompt: shot {i} must be a (question, answer) pair, got {shot!r}")
        q, a = shot
        parts.append(_turn(q) + _TARGET_SEP + a + _SHOT_SEP)
    return "".join(parts) + _turn(question)


def fewshot_indices(
    n_train: int, n_eval: int, *, k: int = FEWSHOT, seed: int = FEWSHOT_SEED
) -> list[list[int]]:
    """Train-split indices of the k shots for each of the first ``n_eval`` test questions.

    The harness keeps one ``random.Random(seed)`` per task and draws ``sample(train_docs, k)`` for
    each test document in order, so question i gets the (i+1)-th draw. ``random.sample`` picks
    positions from the pool's length only, so sampling ``range(n_train)`` gives the same positions.
    Matches a single-process run over the test split in its order (with ``--limit`` too); with
    several ranks each rank draws for its own slice of documents.
    """
    if k > n_train:
        raise ValueError(f"fewshot_indices: k={k} shots from a train split of {n_train}")
    rnd = random.Random(seed)
    pool = range(n_train)
    return [rnd.sample(pool, k) for _ in range(n_eval)]


def prompts(
    questions: Sequence[str],
    train: Sequence[tuple[str, str]],
    *,
    k: int = FEWSHOT,
    seed: int = FEWSHOT_SEED,
) -> list[str]:
    """The harness's prompt for each test question in order, shots drawn from ``train`` pairs.

    ``train`` must be GSM8K's train split in its published order (7473 pairs) for the shots to be
    the harness's; any other pool gives the same format with other shots.
    """
    return [
        fewshot_prompt(q, [train[j] for j in idx])
        for q, idx in zip(questions, fewshot_indices(len(train), len(questions), k=k, seed=seed))
    ]


def cut_at_stop(text: str, stop: Sequence[str] = STOP) -> str:
    """Keep what comes before the first occurrence of any stop sequence (as the harness does)."""
    for s in stop:
        if s:
            text = text.split(s, 1)[0]
    return text


def strict_match(text: str) -> str:
    """The number after the first "#### " (exactly one space; digits, ".", ",", optional "-")."""
    m = _STRICT_RE.search(text)
    return m.group(1).strip() if m else INVALID


def flexible_extract(text: str) -> str:
    """The last run of 2+ characters from "$0-9.,", or the last integer (each with optional "-").

    Note the first alternative also matches runs without digits, such as "..." or ",,".
    """
    last = None
    for last in _FLEXIBLE_RE.finditer(text):
        pass
    if last is None:
        return INVALID
    return (last.group(1) or last.group(2)).strip()


def normalize(text: str) -> str:
    """exact_match's preprocessing: delete ",", "$", all up to the last "#### ", a final "."; lower-case."""
    for rx in _IGNORE_RES:
        text = rx.sub("", text)
    return text.lower()


def exact_match(pred: str, gold: str) -> bool:
    """String equality after ``normalize`` on both sides (no numeric equivalence)."""
    return normalize(pred) == normalize(gold)


FILTERS = {"strict-match": strict_match, "flexible-extract": flexible_extract}


def score(generation: str, gold: str, stop: Sequence[str] = STOP) -> dict[str, float]:
    """exact_match under each filter for one generation: {"strict-match": 0/1, "flexible-extract": 0/1}.

    The generation is first cut at the stop sequences, so a model that runs on into a next
    "Question:" is scored on its first answer only.
    """
    text = cut_at_stop(generation, stop)
    return {name: float(exact_match(f(text), gold)) for name, f in FILTERS.items()}
