"""Held-out metrics of one model: answer accuracy, length, truncation and degeneration of greedy
generations, the token NLL of the gold solutions, and (with candidate CoTs) assessment accuracy.

The greedy generations follow one protocol (`PROTOCOLS`): lnrl's zero-shot chat prompt ("chat",
`answer_accuracy`) or lm-evaluation-harness's 5-shot plain-text gsm8k task ("harness_gsm8k",
lnrl.evaluation.harness); pass@k / maj@k from sampled completions are an option on top
(lnrl.evaluation.samples). Every metric comes with its per-question records (`EvalResult`, written by
`EvalResult.write_records`), so a results table can put a bootstrap interval on it and pair two models
on the same questions (lnrl.reporting, lnrl.stats).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lnrl.data.records import Example, GroupRecord, iter_jsonl
from lnrl.data.tokenize import encode
from lnrl.evaluation.assessment import assessment_accuracy
from lnrl.evaluation.harness import harness_accuracy
from lnrl.evaluation.samples import SampleSpec, sample_accuracy
from lnrl.generation import generate
from lnrl.scoring import score_rows
from lnrl.utils import write_jsonl
from lnrl.verify import MathVerifier, grade_answer, is_degenerate
from lnrl.verify.profile import is_near_miss

# eval.protocol: how the held-out questions are prompted, decoded greedily and scored.
PROTOCOLS = ("chat", "harness_gsm8k")

# The per-question files of an evaluation, by EvalResult field (lnrl.reporting.records reads them back).
RECORD_FILES = {"generations": "generations.jsonl", "assessment": "assessment.jsonl", "nll": "nll.jsonl",
                "harness": "harness.jsonl", "samples": "samples.jsonl"}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={protocol!r}; expected one of {', '.join(PROTOCOLS)} "
                         f"(docs/evaluation_protocols.md)")
    return protocol


def near_miss_ids(records: Sequence[dict] | str | Path) -> set[str]:
    """The questions a model (e.g. the VFT baseline) answered wrong but nearly right (`is_near_miss`),
    from its generation records (or its generations.jsonl): the subset on which weighted and plain DPO
    are compared."""
    if isinstance(records, (str, Path)):
        records = [obj for _, obj in iter_jsonl(records)]
    return {r["id"] for r in records if is_near_miss(bool(r["correct"]), r.get("profile"))}


@dataclass
class EvalResult:
    """Aggregates and per-question records; a record list is None when its part did not run."""

    metrics: dict[str, float]
    generations: list[dict] | None                        # one per held-out question (protocol chat)
    assessment: list[dict] = field(default_factory=list)  # one per candidate question with pairs
    nll: list[dict] = field(default_factory=list)         # one per held-out question with a scored gold CoT
    harness: list[dict] | None = None                     # one per held-out question (protocol harness_gsm8k)
    samples: list[dict] | None = None                     # one per held-out question (eval.samples)

    def write_records(self, out_dir: str | Path) -> list[Path]:
        """Write every record list that ran into `out_dir` (RECORD_FILES); return the paths.

        Assessment and NLL files are written even when empty: the metric was measured on no question.
        The file of a part that did not run is removed if an earlier evaluation into the same dir left
        one, so a results table never reads another evaluation's records as this one's.
        """
        written = []
        for kind, name in RECORD_FILES.items():
            rows, path = getattr(self, kind), Path(out_dir) / name
            if rows is None:
                path.unlink(missing_ok=True)
                continue
            write_jsonl(path, rows)
            written.append(path)
        return written


def answer_accuracy(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                    batch_size: int = 16, system_prompt: str | None = None, near_miss_ids: Collection[str] | None = None,
                    progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Greedy-decode every question; return (metrics, one record per example).

    A record is graded by `lnrl.verify.grade_answer` (a truncated generation is never correct through
    the last-number fallback). `degenerate` is looping/garbage text judged on its own
    (`lnrl.verify.is_degenerate`), not the token limit: `truncated` and `no_answer` are separate flags
    and rates. `near_miss_ids`: the questions of a reference model's near misses (e.g. the VFT model's,
    `near_miss_ids(records)`), flagged on every model's records so all models are compared on the same
    subset (`val/near_miss_acc`).
    """
    gens = generate(model, tokenizer, [e.question for e in examples], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, system_prompt=system_prompt, desc="eval: generate",
                    progress=progress)
    records = []
    verifier = MathVerifier()
    for ex, (g,) in zip(examples, gens):
        pred, correct = grade_answer(g.text, ex.answer, truncated=g.truncated)
        profile = verifier.profile(ex.question, g.text, ex.answer, truncated=g.truncated)
        records.append({"id": ex.id, "question": ex.question, "answer": ex.answer, "completion": g.text,
                        "pred": pred, "correct": correct, "n_tokens": g.n_tokens, "truncated": g.truncated,
                        "no_answer": pred is None, "degenerate": is_degenerate(g.text),
                        "near_miss": None if near_miss_ids is None else ex.id in near_miss_ids,
                        "degeneracy": profile.degeneracy, "profile": profile.to_dict()})
    n = max(len(records), 1)
    metrics = {
        "val/answer_acc": sum(r["correct"] for r in records) / n,
        "val/gen_len": sum(r["n_tokens"] for r in records) / n,
        "val/truncated_rate": sum(r["truncated"] for r in records) / n,
        "val/degenerate_rate": sum(r["degenerate"] for r in records) / n,
        "val/no_answer_rate": sum(r["no_answer"] for r in records) / n,
    }
    if near_miss_ids is not None:
        near = [r for r in records if r["near_miss"]]
        metrics["val/near_miss_questions"] = float(len(near))
        if near:
            metrics["val/near_miss_acc"] = sum(r["correct"] for r in near) / len(near)
    return metrics, records


def gold_nll(model, tokenizer, examples: Sequence[Example], *, max_length: int = 512, batch_size: int = 8,
             system_prompt: str | None = None, progress: bool = True) -> tuple[float, list[dict]]:
    """(token-level NLL of the gold solutions, one {id, logp_sum, n_tokens} record per scored question):
    the mean over all solution tokens, as VFT trains it."""
    rows = [encode(tokenizer, e.question, e.solution, max_length, system_prompt=system_prompt) for e in examples]
    scores = score_rows(model, rows, pad_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress,
                        desc="eval: gold nll")
    records = [{"id": e.id, "logp_sum": lp, "n_tokens": n} for e, s in zip(examples, scores) if s is not None
               for lp, n in [s]]
    total_tokens = sum(r["n_tokens"] for r in records)
    return -sum(r["logp_sum"] for r in records) / max(total_tokens, 1), records


def evaluate_model(model, tokenizer, examples: Sequence[Example], *, max_new_tokens: int = 256,
                   batch_size: int = 16, max_length: int = 512, system_prompt: str | None = None,
                   candidates: Sequence[GroupRecord] | None = None, include_gold: bool = False,
                   nll_examples: int | None = None, near_miss_ids: Collection[str] | None = None,
                   protocol: str = "chat", shots_from: Sequence[Example] | None = None,
                   samples: SampleSpec | Mapping | None = None, progress: bool = True) -> EvalResult:
    """All generation-free and generation-based held-out metrics of one model.

    `protocol` (PROTOCOLS): "chat" gives `val/answer_acc` and the other generation metrics
    (`answer_accuracy`); "harness_gsm8k" gives `val/harness_strict_match` and
    `val/harness_flexible_extract` instead (lnrl.evaluation.harness), its shots drawn from `shots_from`
    (the training split). `samples` (a SampleSpec or the `eval.samples` mapping; None or k null = off):
    also `val/pass@1`, `val/pass@k`, `val/maj@k` from sampled completions under the chat prompt.
    With `candidates` (group records of held-out questions, e.g. `lnrl-sample split=eval` output)
    also `val/assessment_acc` over the generated candidates (the AFT paper's definition) and, with
    `include_gold`, `val/assessment_acc_gold` with each gold CoT as an extra correct candidate
    (lnrl.evaluation.assessment). `nll_examples`: score the gold NLL on the first n questions only
    (it costs a forward pass per question; None = all). NLL and assessment use the chat template
    under either protocol.
    """
    check_protocol(protocol)
    spec = SampleSpec.from_config(samples)
    records = harness = sampled = None
    if protocol == "chat":
        metrics, records = answer_accuracy(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, system_prompt=system_prompt,
                                           near_miss_ids=near_miss_ids, progress=progress)
    else:
        if near_miss_ids is not None:
            raise ValueError("eval.near_miss_from flags the near misses of chat-protocol generations; "
                             f"eval.protocol={protocol} has none: set eval.near_miss_from=null")
        if shots_from is None:
            raise ValueError(f"eval.protocol={protocol} needs the training split for its shots (shots_from)")
        metrics, harness = harness_accuracy(model, tokenizer, examples, shots_from, max_new_tokens=max_new_tokens,
                                            batch_size=batch_size, progress=progress)
    if spec is not None:
        found, sampled = sample_accuracy(model, tokenizer, examples, spec, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, system_prompt=system_prompt, progress=progress)
        metrics.update(found)
    nll_set = examples[:nll_examples] if nll_examples is not None else examples
    metrics["val/nll"], nll = gold_nll(model, tokenizer, nll_set, max_length=max_length, batch_size=batch_size,
                                       system_prompt=system_prompt, progress=progress)
    metrics["val/nll_questions"] = float(len(nll))
    assessment: list[dict] = []
    if candidates:
        found, assessment = assessment_accuracy(model, tokenizer, candidates, include_gold=include_gold,
                                                batch_size=batch_size, max_length=max_length,
                                                system_prompt=system_prompt, progress=progress)
        metrics.update(found)
    metrics["val/n_examples"] = float(len(examples))
    return EvalResult(metrics, records, assessment, nll, harness, sampled)
