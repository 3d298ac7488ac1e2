"""Held-out metrics of one model: answer accuracy, length and degeneration of greedy generations, the
token NLL of the gold solutions, and (with candidate CoTs) assessment accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from lnrl.data.records import Example, GroupRecord
from lnrl.data.tokenize import encode
from lnrl.evaluation.assessment import assessment_accuracy
from lnrl.generation import generate
from lnrl.scoring import score_rows
from lnrl.verify import MathVerifier
from lnrl.verify.answers import answers_match, extract_answer
from lnrl.verify.profile import DEGENERATE_AT


def answer_accuracy(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                    batch_size: int = 16, system_prompt: str | None = None,
                    progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Greedy-decode every question; return (metrics, one record per example)."""
    gens = generate(model, tokenizer, [e.question for e in examples], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, system_prompt=system_prompt, desc="eval: generate",
                    progress=progress)
    records = []
    verifier = MathVerifier()
    for ex, (g,) in zip(examples, gens):
        pred = extract_answer(g.text)
        profile = verifier.profile(ex.question, g.text, ex.answer, truncated=g.truncated)
        records.append({"id": ex.id, "question": ex.question, "answer": ex.answer, "completion": g.text,
                        "pred": pred, "correct": answers_match(pred, ex.answer),
                        "n_tokens": g.n_tokens, "truncated": g.truncated, "degeneracy": profile.degeneracy,
                        "profile": profile.to_dict()})
    n = max(len(records), 1)
    metrics = {
        "val/answer_acc": sum(r["correct"] for r in records) / n,
        "val/gen_len": sum(r["n_tokens"] for r in records) / n,
        "val/truncated_rate": sum(r["truncated"] for r in records) / n,
        "val/degenerate_rate": sum(r["degeneracy"] >= DEGENERATE_AT for r in records) / n,
    }
    return metrics, records


def gold_nll(model, tokenizer, examples: Sequence[Example], *, max_length: int = 512, batch_size: int = 8,
             system_prompt: str | None = None, progress: bool = True) -> float:
    """Token-level NLL of the gold solutions (mean over all solution tokens, as VFT trains it)."""
    rows = [encode(tokenizer, e.question, e.solution, max_length, system_prompt=system_prompt) for e in examples]
    scores = [s for s in score_rows(model, rows, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                                    progress=progress, desc="eval: gold nll") if s is not None]
    total_tokens = sum(n for _, n in scores)
    return -sum(lp for lp, _ in scores) / max(total_tokens, 1)


def evaluate_model(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                   batch_size: int = 16, max_length: int = 512, system_prompt: str | None = None,
                   candidates: Sequence[GroupRecord] | None = None, include_gold: bool = True,
                   progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """All generation-free and generation-based held-out metrics of one model.

    With `candidates` (group records of held-out questions, e.g. `lnrl-sample split=eval` output)
    also `val/assessment_acc` (lnrl.evaluation.assessment).
    """
    metrics, records = answer_accuracy(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    metrics["val/nll"] = gold_nll(model, tokenizer, examples, max_length=max_length,
                                  batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    if candidates:
        metrics.update(assessment_accuracy(model, tokenizer, candidates, include_gold=include_gold,
                                           batch_size=batch_size, max_length=max_length,
                                           system_prompt=system_prompt, progress=progress))
    metrics["val/n_examples"] = float(len(examples))
    return metrics, records
