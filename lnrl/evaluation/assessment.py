"""Assessment accuracy (AFT paper, arXiv 2309.02144, section 3): does the model's own likelihood rank
the correct chains of thought it could generate above the incorrect ones?

For question q with generated correct candidates P_q and generated incorrect candidates N_q, and the
model's length-normalized log-likelihood s(c) = (1/|c|) sum_t log p(c_t | q, c_<t),

    val/assessment_acc = sum_q sum_{p in P_q, n in N_q} ( [s(p) > s(n)] + 0.5 [s(p) = s(n)] )
                         / sum_q |P_q| |N_q|

over the questions that have both (mixed groups); `val/assessment_pairs` and
`val/assessment_questions` say how many pairs and questions it rests on. Candidates are group
records (docs/data.md), e.g. `lnrl-sample split=eval` output: a fixed file lets every model be judged
on the same CoTs. `val/assessment_acc_gold` (with `include_gold`) is a different metric: the gold CoT
joins P_q, so questions without a correct sample yield gold-vs-wrong pairs too; it is not the paper's.
Rows are tokenized as training does (`lnrl.data.tokenize.encode`; a truncated candidate gets no
end-of-turn token) and scored by `lnrl.scoring.score_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lnrl.data.records import GroupRecord
from lnrl.data.tokenize import encode
from lnrl.scoring import SeqScores, score_rows
from lnrl.scoring import normalize as normalize_scores


def score_texts(model, tokenizer, items: Sequence[tuple[str, str] | tuple[str, str, bool]], *,
                normalize: str = "mean", batch_size: int = 8, max_length: int = 512,
                system_prompt: str | None = None, progress: bool = False) -> list[float | None]:
    """Normalized log-likelihood of each (question, completion[, truncated]); None where the prompt alone
    fills max_length.

    Overlong completions are truncated as in training, so s(c) covers the tokens training would see;
    a completion flagged truncated (cut by the token limit) is scored without an end-of-turn token.
    """
    rows = [encode(tokenizer, it[0], it[1], max_length, system_prompt=system_prompt,
                   eos=not (len(it) > 2 and it[2])) for it in items]
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


def assessment_accuracy(model, tokenizer, candidates: Sequence[GroupRecord], *, include_gold: bool = False,
                        normalize: str = "mean", batch_size: int = 8, max_length: int = 512,
                        system_prompt: str | None = None,
                        progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """(metrics, per-question records) of assessment accuracy over the candidate groups (formula above).

    Metrics: `val/assessment_acc` over generated candidates (NaN when no group is mixed),
    `val/assessment_pairs`, `val/assessment_questions` (mixed groups), `val/assessment_candidates`
    (groups given); with include_gold also `val/assessment_acc_gold` and `val/assessment_pairs_gold`.
    Records: {id, pairs, right} for every mixed group (generated candidates only).
    """
    items: list[tuple[str, str, bool]] = []
    members: list[tuple[str, list[int], list[int], int | None]] = []  # id, positives, negatives, gold item
    for g in candidates:
        pos, neg = [], []
        mixed = 0 < g.n_correct < len(g.completions)
        if not mixed and not include_gold:
            continue  # no (correct, incorrect) pair to order: nothing to score
        for c in g.completions:
            (pos if c.correct else neg).append(len(items))
            items.append((g.question, c.text, bool(c.truncated)))
        gold = None
        if include_gold:
            gold = len(items)
            items.append((g.question, g.gold_solution, False))
        members.append((g.id, pos, neg, gold))
    scores = score_texts(model, tokenizer, items, normalize=normalize, batch_size=batch_size,
                         max_length=max_length, system_prompt=system_prompt, progress=progress)
    records: list[dict] = []
    right_gold, pairs_gold = 0.0, 0
    for gid, pos, neg, gold in members:
        p = [scores[i] for i in pos if scores[i] is not None]
        n = [scores[i] for i in neg if scores[i] is not None]
        r, k = ordered_share(p, n)
        if k:
            records.append({"id": gid, "pairs": k, "right": r})
        if gold is not None and scores[gold] is not None:
            rg, kg = ordered_share([*p, scores[gold]], n)
            right_gold, pairs_gold = right_gold + rg, pairs_gold + kg
    right, pairs = sum(r["right"] for r in records), sum(r["pairs"] for r in records)
    metrics = {"val/assessment_acc": right / pairs if pairs else math.nan, "val/assessment_pairs": float(pairs),
               "val/assessment_questions": float(len(records)), "val/assessment_candidates": float(len(candidates))}
    if include_gold:
        metrics["val/assessment_acc_gold"] = right_gold / pairs_gold if pairs_gold else math.nan
        metrics["val/assessment_pairs_gold"] = float(pairs_gold)
    return metrics, records
