"""Preference records from sampled groups: ranks, pair weights, cached reference scores.

`build_prefs` (the lnrl-prefs app) reads `lnrl-sample` output and writes to `out_dir`:
- `groups.jsonl`  every group with, on each completion, `rank` (for AFT's ranking variant),
                  `profile.pair_weight` (for weighted DPO) and `ref` (+ `gold_ref`): the reference
                  model's cached SeqScores. Every method reads this one file: AFT and KTO as groups,
                  DPO-style methods through a pairing rule (`data.pairing`), weighted DPO with
                  `data.weight_field=profile.pair_weight`.
- `pairs.jsonl`   the pairs `data.pairing` makes from groups.jsonl, for reading (training derives them
                  again with the same function).
- `stats.json`    counts: pairs per rule, gold used, ranks, weights, mean completion length.

Gold solutions are an explicit choice (`data.gold_as_chosen`, default false): when on, a question
whose samples are all incorrect gets its gold CoT as the chosen side of its pairs (pairs) or as a
positive member (groups), applied by the datamodule when training reads the file. stats.json counts
how many pairs and groups it touches under the setting given here, and each training run logs the
counts it used (`data/pairs_gold_chosen`, `data/groups_gold_positive` in the training run's metrics.json).

Ranks (1 = best): 1 correct; 2 a near miss (`lnrl.verify.profile.is_near_miss`: incorrect, wrongness
< near_wrongness, degeneracy < DEGENERATE_AT); 3 every other incorrect completion.

Pair weight of a rejected completion r, from its verifier profile (lnrl's own formula; docs/verifier.md):

    w(r) = max(w_min, (1 - absurdity_r) * (2 - wrongness_r))

Weighted DPO's point (arXiv 2512.19728) is that near-correct-but-wrong solutions are the informative
negatives. Both factors say how near and plausible the rejected solution is: lower wrongness (a small
numeric gap, sound steps, grounded numbers) and lower absurdity (no loops, garbage or made-up
magnitudes) give a larger weight; an absurd negative the policy already ranks low gets little. The
chosen side is correct in every pair, so the weight reads the rejected side only. The data layer scales
weights to mean 1 over the pairs of a run (`lnrl.data.pairs.make_pairs`), so the weighted loss keeps the
scale of plain DPO. (Before 2026-12 lnrl used (1 + wrongness), which favoured the most wrong negatives,
against the method's intent.)
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
from lnrl.verify.profile import NEAR_WRONGNESS, is_near_miss

log = logging.getLogger(__name__)

WEIGHT_FIELD = "profile.pair_weight"  # where build_prefs writes the weight (data.weight_field of wdpo)


def pair_weight(profile: Mapping[str, float] | None, w_min: float = 0.05) -> float:
    """w = max(w_min, (1 - absurdity) * (2 - wrongness)), in [w_min, 2]; 1 without a profile."""
    if not profile:
        return 1.0
    return max(w_min, (1.0 - profile.get("absurdity", 0.0)) * (2.0 - profile.get("wrongness", 1.0)))


def rank_of(c: Completion, near_wrongness: float = NEAR_WRONGNESS) -> int:
    """1 correct; 2 a near miss (incorrect but well-formed, wrongness < near_wrongness); 3 the rest."""
    if c.correct:
        return 1
    return 2 if is_near_miss(False, c.profile, near_wrongness) else 3


def annotate(groups: Sequence[GroupRecord], *, near_wrongness: float = NEAR_WRONGNESS,
             w_min: float = 0.05) -> list[GroupRecord]:
    """Groups with `rank` and `profile.pair_weight` on every completion."""
    out = []
    for g in groups:
        comps = [replace(c, rank=rank_of(c, near_wrongness),
                         profile={**(c.profile or {}), "pair_weight": pair_weight(c.profile, w_min)})
                 for c in g.completions]
        out.append(replace(g, completions=comps))
    return out


def pair_stats(groups: Sequence[GroupRecord], gold_as_chosen: bool, weight_field: str | None) -> dict:
    """make_pairs' counts under every registered rule (derived from the registry)."""
    stats = {}
    for rule in PAIRING_RULES:
        s: dict = {}
        make_pairs(list(groups), rule=rule, gold_as_chosen=gold_as_chosen, weight_field=weight_field, stats=s)
        stats[rule] = s
    return stats


def mean_pair_tokens(groups: Sequence[GroupRecord], rule: str, gold_as_chosen: bool) -> float | None:
    """Mean completion length in tokens (eos included, from the cached refs' n_tokens) over the chosen
    and rejected sides of the pairs `rule` makes: the L that relates length-averaged DPO to summed DPO
    (mean-normalised DPO at beta is summed DPO at beta / L), used to match their strengths."""
    lengths = [n for p in make_pairs(list(groups), rule=rule, gold_as_chosen=gold_as_chosen)
               for ref in (p.ref_chosen, p.ref_rejected) if ref is not None for n in [ref[1]]]
    return sum(lengths) / len(lengths) if lengths else None


def build_prefs(groups: Sequence[GroupRecord], out_dir: str | Path, *, ref_model=None, tokenizer=None,
                ref_model_name: str | None = None, max_length: int = 512, system_prompt: str | None = None,
                batch_size: int = 8, pairing: str = "all", gold_as_chosen: bool = False,
                near_wrongness: float = NEAR_WRONGNESS, w_min: float = 0.05, progress: bool = True) -> dict:
    """Write groups.jsonl, pairs.jsonl and stats.json to out_dir (module docstring).

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
    pairs = make_pairs(scored, rule=pairing, gold_as_chosen=gold_as_chosen, weight_field=WEIGHT_FIELD)
    write_jsonl(out / "pairs.jsonl", [
        {"id": p.id, "group_id": p.meta["group_id"], "rule": p.meta["rule"], "gold_chosen": p.meta["gold_chosen"],
         "chosen_index": p.meta["chosen"], "rejected_index": p.meta["rejected"], "weight": p.weight,
         "question": p.question, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    comps = [c for g in scored for c in g.completions]
    stats = {
        "groups": len(scored),
        "completions": len(comps),
        "ranks": {r: sum(c.rank == r for c in comps) for r in (1, 2, 3)},
        "truncated": sum(bool(c.truncated) for c in comps),
        "groups_mixed": sum(0 < g.n_correct < len(g.completions) for g in scored),
        "groups_all_incorrect": sum(bool(g.completions) and g.n_correct == 0 for g in scored),
        "gold_as_chosen": gold_as_chosen,
        # groups that get the gold CoT as a positive member when training reads them as groups
        "groups_gold_positive": sum(bool(g.completions) and g.n_correct == 0 for g in scored) if gold_as_chosen else 0,
        "pairing": pairing,
        "pairs": pair_stats(scored, gold_as_chosen, WEIGHT_FIELD),
        "mean_pair_tokens": {rule: mean_pair_tokens(scored, rule, gold_as_chosen) for rule in PAIRING_RULES},
        "ref_model": ref_model_name if ref_model is not None else None,
        "refs_missing": sum(c.ref is None for c in comps) + sum(g.gold_ref is None for g in scored),
    }
    write_json(out / "stats.json", stats)
    log.info("prefs: %s", stats)
    return stats
