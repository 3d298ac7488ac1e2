"""Preference records from sampled groups: ranks, pair weights, cached reference scores.

`build_prefs` (the lnrl-prefs app) reads `lnrl-sample` output and writes to `out_dir`:
- `groups.jsonl`     every group with, on each completion, `rank` (for AFT's ranking variant),
                     `profile.pair_weight` (for weighted DPO) and `ref` (+ `gold_ref`): the
                     reference model's cached SeqScores. DPO-style methods read it with a pairing
                     rule (`data.pairing`), weighted DPO with `data.weight_field=profile.pair_weight`.
- `groups_aft.jsonl` the same, where a question without a correct sample gets its gold CoT as a
                     positive member (rank 1), so AFT's alignment term sees it (`gold_as_positive`).
- `pairs.jsonl`      the pairs `data.pairing` makes from groups.jsonl, for reading (training
                     derives them again with the same function).
- `stats.json`       counts: pairs per rule, gold used, ranks, weights.

Ranks (1 = best): 1 correct; 2 incorrect but near: wrongness < `near_wrongness` and degeneracy
< DEGENERATE_AT (0.5; a well-formed solution with a wrong answer); 3 every other incorrect completion.

Pair weight of a rejected completion r, from its verifier profile (docs/pipeline.md):

    w(r) = max(w_min, (1 + wrongness_r) * (1 - absurdity_r))

A plausible-looking wrong solution (low absurdity) is the informative, hard negative and counts
most; the more clearly the verifier finds it wrong, the surer the preference; an absurd one
(garbage, loops, made-up numbers) is easy, and the policy already ranks it low. The chosen side is
a correct completion (or the gold CoT) in every pair, so the weight reads the rejected side only.
The data layer scales weights to mean 1 over the pairs of a run (`make_pairs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from lnrl.data.pairs import PAIRING_RULES, make_pairs
from lnrl.data.records import Completion, GroupRecord, read_groups, write_groups
from lnrl.reference import score_file
from lnrl.utils import write_json, write_jsonl
from lnrl.verify import MathVerifier
from lnrl.verify.profile import DEGENERATE_AT

log = logging.getLogger(__name__)


def pair_weight(profile: Mapping[str, float] | None, w_min: float = 0.05) -> float:
    """w = max(w_min, (1 + wrongness) * (1 - absurdity)); 1 without a profile."""
    if not profile:
        return 1.0
    return max(w_min, (1.0 + profile.get("wrongness", 0.0)) * (1.0 - profile.get("absurdity", 0.0)))


def rank_of(c: Completion, near_wrongness: float = 0.6) -> int:
    """1 correct; 2 incorrect but well-formed and near (wrongness < near_wrongness); 3 the rest."""
    if c.correct:
        return 1
    p = c.profile or {}
    if p and p.get("wrongness", 1.0) < near_wrongness and p.get("degeneracy", 1.0) < DEGENERATE_AT:
        return 2
    return 3


def annotate(groups: Sequence[GroupRecord], *, near_wrongness: float = 0.6, w_min: float = 0.05) -> list[GroupRecord]:
    """Groups with `rank` and `profile.pair_weight` on every completion."""
    out = []
    for g in groups:
        comps = [replace(c, rank=rank_of(c, near_wrongness),
                         profile={**(c.profile or {}), "pair_weight": pair_weight(c.profile, w_min)})
                 for c in g.completions]
        out.append(replace(g, completions=comps))
    return out


def with_gold_positive(groups: Sequence[GroupRecord], verifier: MathVerifier | None = None) -> tuple[list[GroupRecord], int]:
    """A question whose samples are all incorrect gets its gold CoT as a correct member (rank 1).

    The gold completion carries the group's cached `gold_ref` and its own verifier profile.
    Returns (groups, number of groups that got one).
    """
    verifier = verifier or MathVerifier()
    out, added = [], 0
    for g in groups:
        if g.completions and g.n_correct == 0:
            profile = verifier.profile(g.question, g.gold_solution, g.answer).to_dict()
            gold = Completion(text=g.gold_solution, pred=g.answer, correct=True, rank=1,
                              profile={**profile, "pair_weight": pair_weight(profile)}, ref=g.gold_ref)
            g = replace(g, completions=[*g.completions, gold],
                        provenance={**g.provenance, "gold_as_positive": True})
            added += 1
        out.append(g)
    return out, added


def pair_stats(groups: Sequence[GroupRecord], gold_as_chosen: bool, weight_field: str | None) -> dict:
    """make_pairs' counts under every registered rule (derived from the registry)."""
    stats = {}
    for rule in PAIRING_RULES:
        s: dict = {}
        make_pairs(list(groups), rule=rule, gold_as_chosen=gold_as_chosen, weight_field=weight_field, stats=s)
        stats[rule] = s
    return stats


def build_prefs(groups: Sequence[GroupRecord], out_dir: str | Path, *, ref_model=None, tokenizer=None,
                ref_model_name: str | None = None, max_length: int = 512, system_prompt: str | None = None,
                batch_size: int = 8, pairing: str = "all", gold_as_chosen: bool = True,
                gold_as_positive: bool = True, near_wrongness: float = 0.6, w_min: float = 0.05,
                progress: bool = True) -> dict:
    """Write groups.jsonl, groups_aft.jsonl, pairs.jsonl and stats.json to out_dir (module docstring).

    With `ref_model` (and its tokenizer) every completion and gold CoT gets cached reference
    scores via lnrl.reference (resumable: groups already scored with the same model are kept).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    annotated = annotate(groups, near_wrongness=near_wrongness, w_min=w_min)
    final = out / "groups.jsonl"
    if ref_model is not None:
        staged = out / "groups.unscored.jsonl"
        write_groups(staged, annotated)
        score_file(ref_model, tokenizer, staged, final, ref_model=ref_model_name or "unnamed",
                   batch_size=batch_size, max_length=max_length, system_prompt=system_prompt, progress=progress)
        staged.unlink()
    else:
        write_groups(final, annotated)
    # Annotate again: a resumed run keeps groups scored earlier, which must follow today's settings.
    scored = annotate(read_groups(final), near_wrongness=near_wrongness, w_min=w_min)
    write_groups(final, scored)
    aft_groups, n_gold = with_gold_positive(scored) if gold_as_positive else (scored, 0)
    write_groups(out / "groups_aft.jsonl", aft_groups)
    weight_field = "profile.pair_weight"
    pairs = make_pairs(scored, rule=pairing, gold_as_chosen=gold_as_chosen, weight_field=weight_field)
    write_jsonl(out / "pairs.jsonl", [
        {"id": p.id, "group_id": p.meta["group_id"], "rule": p.meta["rule"], "gold_chosen": p.meta["gold_chosen"],
         "chosen_index": p.meta["chosen"], "rejected_index": p.meta["rejected"], "weight": p.weight,
         "question": p.question, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    comps = [c for g in scored for c in g.completions]
    stats = {
        "groups": len(scored),
        "completions": len(comps),
        "ranks": {r: sum(c.rank == r for c in comps) for r in (1, 2, 3)},
        "aft_gold_positive": n_gold,
        "aft_groups_with_both": sum(0 < g.n_correct < len(g.completions) for g in aft_groups),
        "pairing": pairing,
        "pairs": pair_stats(scored, gold_as_chosen, weight_field),
        "ref_model": ref_model_name if ref_model is not None else None,
        "refs_missing": sum(c.ref is None for c in comps) + sum(g.gold_ref is None for g in scored),
    }
    write_json(out / "stats.json", stats)
    log.info("prefs: %s", stats)
    return stats
