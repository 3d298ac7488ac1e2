"""pass@k and maj@k from sampled completions of each held-out question (``eval.samples.k=...``).

Each question gets n sampled completions (n >= k; n = k unless set) under lnrl's zero-shot chat prompt,
each graded by `lnrl.verify.grade_answer`, then

    val/pass@1  mean over questions of c/n (c correct of n)
    val/pass@k  mean over questions of the unbiased pass@k, 1 - C(n-c, k) / C(n, k) (Chen et al. 2021,
                arXiv 2107.03374; `lnrl.stats.pass_at_k_values`): with n = k, "some sample is correct"
    val/maj@k   share of questions whose majority answer among the first k samples is the reference
                (`lnrl.stats.maj_at_k_values`, answers grouped by `lnrl.verify.answers_match`; a sample
                without an extracted answer does not vote; ties go to the answer seen first)

The metric names say "k", not its value (`val/samples_k` gives it), so a results table can register them
once (lnrl.reporting.compare). A record per question (samples.jsonl): id, answer, n, k, completions,
preds, votes, correct, truncated, n_tokens (lists over the n samples), majority (the first k samples'
winning answer or null), pass_at_1, pass_at_k, maj_at_k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from lnrl.data.records import Example
from lnrl.generation import generate
from lnrl.stats import majority_vote, maj_at_k_values, pass_at_k_values
from lnrl.verify import answers_match, extract_answer_with_kind, grade_answer


@dataclass(frozen=True)
class SampleSpec:
    """How to sample (conf/eval/default.yaml `samples`, whose defaults these are: tests check they agree)."""

    k: int
    n: int | None = None         # samples per question; None = k (n > k lowers pass@k's variance)
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0               # 0 = no top-k filter
    seed: int = 0                # the same samples for the same model, whatever the batching

    @property
    def n_samples(self) -> int:
        return self.n if self.n is not None else self.k

    @classmethod
    def from_config(cls, cfg: SampleSpec | Mapping | None) -> SampleSpec | None:
        """A checked spec from `eval.samples` (a mapping; k null or the mapping null = no sampling)."""
        if cfg is None or isinstance(cfg, SampleSpec):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ValueError(f"eval.samples={cfg!r}; expected a mapping such as {{k: 8, temperature: 0.8}} or null")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"eval.samples: unknown key(s) {unknown}; accepted: {sorted(known)}")
        if cfg.get("k") is None:
            return None

        def integer(name: str, minimum: int) -> None:
            v = cfg.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
                raise ValueError(f"eval.samples.{name}={v!r}; expected an integer >= {minimum}")

        integer("k", 1)
        integer("n", int(cfg["k"]))
        integer("top_k", 0)
        integer("seed", 0)
        t, p = cfg.get("temperature", cls.temperature), cfg.get("top_p", cls.top_p)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"eval.samples.temperature={t!r}; expected a number > 0 (sampling; greedy is the "
                             f"main evaluation)")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"eval.samples.top_p={p!r}; expected a number in (0, 1]")
        return cls(**{k: v for k, v in cfg.items()})


def sample_accuracy(model, tokenizer, examples: Sequence[Example], spec: SampleSpec, *, max_new_tokens: int = 256,
                    batch_size: int = 16, system_prompt: str | None = None,
                    progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Sample `spec.n_samples` completions per question; (metrics, one record per question) as above."""
    n, k = spec.n_samples, spec.k
    gens = generate(model, tokenizer, [e.question for e in examples], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, num_return_sequences=n, do_sample=True, temperature=spec.temperature,
                    top_p=spec.top_p, top_k=spec.top_k, system_prompt=system_prompt, seed=spec.seed,
                    desc="eval: sample", progress=progress)
    records = []
    for ex, rows in zip(examples, gens):
        graded = [grade_answer(g.text, ex.answer, truncated=g.truncated) for g in rows]
        # A vote is what grading would accept: a truncated text's last-number fallback is no answer.
        kinds = [extract_answer_with_kind(g.text)[1] for g in rows]
        votes = [None if g.truncated and kind == "last_number" else pred
                 for g, (pred, _), kind in zip(rows, graded, kinds)]
        records.append({"id": ex.id, "answer": ex.answer, "n": n, "k": k,
                        "completions": [g.text for g in rows], "preds": [p for p, _ in graded], "votes": votes,
                        "correct": [c for _, c in graded], "truncated": [g.truncated for g in rows],
                        "n_tokens": [g.n_tokens for g in rows],
                        "majority": majority_vote(votes[:k], equivalent=answers_match)})
    pass1 = pass_at_k_values([r["correct"] for r in records], 1)
    passk = pass_at_k_values([r["correct"] for r in records], k)
    majk = maj_at_k_values([r["votes"] for r in records], [e.answer for e in examples], k, equivalent=answers_match)
    for r, p1, pk, mk in zip(records, pass1, passk, majk):
        r.update(pass_at_1=float(p1), pass_at_k=float(pk), maj_at_k=float(mk))
    q = max(len(records), 1)
    metrics = {"val/pass@1": float(pass1.sum()) / q, "val/pass@k": float(passk.sum()) / q,
               "val/maj@k": float(majk.sum()) / q, "val/samples_k": float(k), "val/samples_n": float(n),
               "val/samples_questions": float(len(records))}
    return metrics, records
