"""Assessment accuracy (AFT paper, arXiv 2309.02144, section 3): does the model's own likelihood rank
correct chains of thought above incorrect ones?

For question q with correct candidates P_q and incorrect candidates N_q, and the model's
length-normalized log-likelihood s(c) = (1/|c|) sum_t log p(c_t | q, c_<t),

    assessment_acc = sum_q sum_{p in P_q, n in N_q} ( [s(p) > s(n)] + 0.5 [s(p) = s(n)] )
                     / sum_q |P_q| |N_q|

Candidates are group records (docs/data.md), e.g. `lnrl-sample split=eval` output: a fixed file
lets every model be judged on the same CoTs. With `include_gold` the gold solution joins P_q, so a
question with no correct sample still yields pairs (small models rarely sample a correct CoT).
Rows are tokenized as training does (`lnrl.data.tokenize.encode`) and scored by
`lnrl.scoring.score_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lnrl.data.records import GroupRecord
from lnrl.data.tokenize import encode
from lnrl.scoring import SeqScores, score_rows
from lnrl.scoring import normalize as normalize_scores


def score_texts(model, tokenizer, items: Sequence[tuple[str, str]], *, normalize: str = "mean",
                batch_size: int = 8, max_length: int = 512, system_prompt: str | None = None,
                progress: bool = False) -> list[float | None]:
    """Normalized log-likelihood of each (question, completion); None where the prompt alone fills max_length.

    Overlong completions are truncated as in training, so s(c) covers the tokens training would see.
    """
    rows = [encode(tokenizer, q, c, max_length, system_prompt=system_prompt) for q, c in items]
    raw = score_rows(model, rows, pad_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress,
                     desc="eval: assessment")
    kept = [i for i, s in enumerate(raw) if s is not None]
    out: list[float | None] = [None] * len(items)
    if not kept:
        return out
    # Normalized in float32 by lnrl.scoring.normalize, as training normalizes its scores.
    scores = SeqScores(torch.tensor([raw[i][0] for i in kept], dtype=torch.float32),
                       torch.tensor([raw[i][1] for i in kept], dtype=torch.long))
    for i, s in zip(kept, normalize_scores(scores, normalize).tolist()):
        out[i] = float(s)
    return out


def ordered_share(pos: Sequence[float], neg: Sequence[float]) -> tuple[float, int]:
    """(pairs ordered correctly, ties counting 1/2; number of pairs) over P x N."""
    right = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return right, len(pos) * len(neg)


def assessment_accuracy(model, tokenizer, candidates: Sequence[GroupRecord], *, include_gold: bool = True,
                        normalize: str = "mean", batch_size: int = 8, max_length: int = 512,
                        system_prompt: str | None = None, progress: bool = True) -> dict[str, float]:
    """`val/assessment_acc` over the (correct, incorrect) pairs of each candidate group (formula above).

    Returns also `val/assessment_pairs` and `val/assessment_questions` (questions with at least one
    pair). The accuracy is NaN when no question has both a correct and an incorrect candidate.
    """
    items: list[tuple[str, str]] = []
    members: list[tuple[list[int], list[int]]] = []  # per group: item indices of positives, negatives
    for g in candidates:
        pos, neg = [], []
        for c in g.completions:
            (pos if c.correct else neg).append(len(items))
            items.append((g.question, c.text))
        if include_gold:
            pos.append(len(items))
            items.append((g.question, g.gold_solution))
        members.append((pos, neg))
    scores = score_texts(model, tokenizer, items, normalize=normalize, batch_size=batch_size,
                         max_length=max_length, system_prompt=system_prompt, progress=progress)
    right, pairs, questions = 0.0, 0, 0
    for pos, neg in members:
        p = [scores[i] for i in pos if scores[i] is not None]
        n = [scores[i] for i in neg if scores[i] is not None]
        r, k = ordered_share(p, n)
        right, pairs, questions = right + r, pairs + k, questions + (k > 0)
    return {"val/assessment_acc": right / pairs if pairs else math.nan,
            "val/assessment_pairs": float(pairs), "val/assessment_questions": float(questions)}
