"""Sampling: k chains of thought per question from a policy, graded and profiled, as group records.

`sample_to_dir` (the lnrl-sample app) writes `<out_dir>/shards/shard-NNNNN.jsonl` as sampling goes,
then the merged `<out_dir>/groups.jsonl` (the group schema of docs/data.md) and `<out_dir>/stats.json`.

Resumable and reproducible: shards are fixed chunks of the question list (not of what remains),
and shard i is sampled with a seed derived from (seed, id of its first question). A re-run skips
the shards on disk, so killing a run midway and re-running it yields byte-identical records to an
uninterrupted run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnrl.data.records import Completion, DataError, Example, GroupRecord, read_groups, write_groups
from lnrl.generation import Generation, generate
from lnrl.utils import write_json
from lnrl.verify import MathVerifier, grade_answer, is_degenerate

log = logging.getLogger(__name__)

# What a shard's records depend on: a resumed run must use the same values (checked on resume).
SAMPLING_KEYS = ("model", "checkpoint", "k", "temperature", "top_p", "max_new_tokens", "seed", "source",
                 "split", "system_prompt", "shard_size", "batch_size", "verifier_version")


def shard_seed(seed: int, question_id: str) -> int:
    """A 31-bit seed from (seed, question id): stable across processes, unlike hash()."""
    digest = hashlib.sha256(f"{seed}/{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


def grade(verifier: MathVerifier, example: Example, gens: Sequence[Generation]) -> tuple[list[Completion], int]:
    """Completions of one question, de-duplicated (first occurrence kept), graded and profiled.

    Returns (completions, number of duplicates dropped).
    """
    seen: set[str] = set()
    out: list[Completion] = []
    for g in gens:
        if g.text in seen:
            continue
        seen.add(g.text)
        # A truncated sample is never graded correct through the last-number fallback (grade_answer).
        pred, correct = grade_answer(g.text, example.answer, truncated=g.truncated)
        profile = verifier.profile(example.question, g.text, example.answer, truncated=g.truncated)
        out.append(Completion(text=g.text, pred=pred, correct=correct, truncated=g.truncated,
                              profile=profile.to_dict()))
    return out, len(gens) - len(out)


def sample_shard(model, tokenizer, verifier: MathVerifier, examples: Sequence[Example], *, k: int,
                 temperature: float, top_p: float, max_new_tokens: int, seed: int, batch_size: int,
                 system_prompt: str | None, provenance: Mapping[str, Any], desc: str = "sample",
                 progress: bool = True) -> list[GroupRecord]:
    """k sampled CoTs for each question of one shard, as group records."""
    # batch_size counts sequences; generate() batches questions, each with k return sequences.
    gens = generate(model, tokenizer, [e.question for e in examples], max_new_tokens=max_new_tokens,
                    batch_size=max(1, batch_size // k), num_return_sequences=k, do_sample=True,
                    temperature=temperature, top_p=top_p, system_prompt=system_prompt,
                    seed=shard_seed(seed, examples[0].id), desc=desc, progress=progress)
    groups = []
    for ex, g in zip(examples, gens):
        completions, dupes = grade(verifier, ex, g)
        groups.append(GroupRecord(id=ex.id, question=ex.question, answer=ex.answer, gold_solution=ex.solution,
                                  completions=completions,
                                  provenance={**provenance, "n_sampled": k, "n_duplicates": dupes}))
    return groups


def group_stats(groups: Sequence[GroupRecord]) -> dict[str, float]:
    """What a group file holds: counts and shares over its completions and questions."""
    comps = [c for g in groups for c in g.completions]
    n = max(len(comps), 1)
    return {
        "questions": len(groups),
        "completions": len(comps),
        "duplicates_dropped": sum(int(g.provenance.get("n_duplicates", 0)) for g in groups),
        "correct_rate": sum(c.correct for c in comps) / n,
        "truncated_rate": sum(c.truncated for c in comps) / n,
        # looping/garbage text, judged apart from truncation (as evaluation's val/degenerate_rate)
        "degenerate_rate": sum(is_degenerate(c.text) for c in comps) / n,
        "no_answer_rate": sum(c.pred is None for c in comps) / n,
        "questions_with_correct": sum(g.n_correct > 0 for g in groups),
        "questions_mixed": sum(0 < g.n_correct < len(g.completions) for g in groups),
    }


def sample_to_dir(model, tokenizer, examples: Sequence[Example], out_dir: str | Path, *, k: int = 4,
                  temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 256, seed: int = 0,
                  batch_size: int = 32, shard_size: int = 16, system_prompt: str | None = None,
                  provenance: Mapping[str, Any] | None = None, max_shards: int | None = None,
                  verifier: MathVerifier | None = None, progress: bool = True) -> list[GroupRecord] | None:
    """Sample every question into `out_dir` in shards; merge them into groups.jsonl when all are done.

    Shard i holds examples[i*shard_size:(i+1)*shard_size]. Shards already on disk are checked
    (same question ids, same sampling settings) and kept. `max_shards` stops after sampling that
    many new shards (for time-boxed runs; the next call resumes) and returns None.
    """
    if k < 1 or shard_size < 1:
        raise ValueError(f"k={k} and shard_size={shard_size} must be >= 1")
    if not examples:
        raise ValueError("no questions to sample (n_questions=0 or an empty split?)")
    verifier = verifier or MathVerifier()
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    settings = {**dict(provenance or {}), "k": k, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": max_new_tokens, "seed": seed, "shard_size": shard_size, "batch_size": batch_size,
                "system_prompt": system_prompt, "verifier_version": verifier.version}
    manifest = out / "sample_config.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        changed = {key: (old.get(key), settings.get(key)) for key in SAMPLING_KEYS if old.get(key) != settings.get(key)}
        if changed:
            raise ValueError(f"{out} holds samples made with other settings {changed} (old, new); "
                             f"use another out_dir or delete it")
    write_json(manifest, settings)

    n_shards = (len(examples) + shard_size - 1) // shard_size
    new = 0
    all_groups: list[GroupRecord] = []
    for i in range(n_shards):
        chunk = examples[i * shard_size:(i + 1) * shard_size]
        path = out / "shards" / f"shard-{i:05d}.jsonl"
        if path.exists():
            groups = read_groups(path)
            if [g.id for g in groups] != [e.id for e in chunk]:
                raise DataError(f"{path}: holds other questions than shard {i} of this question list "
                                f"(n_questions, shard_size or the data source changed); use another out_dir")
        else:
            if max_shards is not None and new >= max_shards:
                log.info("sample: stopping after %d new shard(s) (max_shards); re-run to resume", new)
                return None
            groups = sample_shard(model, tokenizer, verifier, chunk, k=k, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                                  system_prompt=system_prompt, provenance=settings,
                                  desc=f"sample shard {i + 1}/{n_shards}", progress=progress)
            write_groups(path, groups)  # atomic: tmp file, then rename
            new += 1
            log.info("sample: shard %d/%d: %s", i + 1, n_shards, group_stats(groups))
        all_groups.extend(groups)
    write_groups(out / "groups.jsonl", all_groups)
    stats = group_stats(all_groups)
    write_json(out / "stats.json", stats)
    log.info("sample: %s -> %s", stats, out / "groups.jsonl")
    return all_groups
