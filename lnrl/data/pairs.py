"""Preference pairs for DPO, derived from group records by a named pairing rule.

AFT and DPO train on the same sampled groups; a pairing rule decides which (chosen, rejected)
pairs a group yields. A rule is a function

    rule(positives: list[Candidate], negatives: list[Candidate], group: GroupRecord, **kw)
        -> list[tuple[Candidate, Candidate]]

registered in PAIRING_RULES with @register_pairing("name"). `positives` are the correct
completions, or just the gold solution when the group has none and gold_as_chosen is on;
`negatives` are the incorrect completions.

Weights (weighted DPO) are read from a field of the rejected completion, must be finite and >= 0,
and are scaled to mean 1 over the dataset. One pair with a weight far above the rest would carry
the whole loss: a pair weighing more than WEIGHT_WARN_RATIO average pairs is warned about, and
`weight_clip` caps every weight at that multiple of the median positive weight before scaling.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lnrl.data.records import Completion, DataError, GroupRecord

log = logging.getLogger(__name__)

# A pair whose weight, after scaling to mean 1, exceeds this counts as that many average pairs:
# the loss is then mostly that one pair. Warned about; weight_clip bounds it.
WEIGHT_WARN_RATIO = 10.0


@dataclass(frozen=True)
class Pair:
    id: str
    question: str
    chosen: str
    rejected: str
    ref_chosen: tuple[float, int] | None  # cached reference (logp_sum, n_tokens)
    ref_rejected: tuple[float, int] | None
    weight: float = 1.0
    meta: dict = field(default_factory=dict)
    # Cut at the sampling token limit: encoded without an eos (lnrl.data.tokenize).
    chosen_truncated: bool = False
    rejected_truncated: bool = False


@dataclass(frozen=True)
class Candidate:
    """A completion with its position in the group ("gold" for the gold solution)."""

    index: int | str
    completion: Completion


PairingRule = Callable[..., list[tuple[Candidate, Candidate]]]
PAIRING_RULES: dict[str, PairingRule] = {}


def register_pairing(name: str) -> Callable[[PairingRule], PairingRule]:
    def deco(fn: PairingRule) -> PairingRule:
        if name in PAIRING_RULES:
            raise ValueError(f"pairing rule {name!r} is already registered")
        PAIRING_RULES[name] = fn
        return fn
    return deco


@register_pairing("all")
def pair_all(positives: list[Candidate], negatives: list[Candidate], group: GroupRecord) -> list[tuple[Candidate, Candidate]]:
    """Every positive x every negative: |P| * |N| pairs per question."""
    return [(p, n) for p in positives for n in negatives]


@register_pairing("one_per_question")
def pair_one_per_question(positives: list[Candidate], negatives: list[Candidate],
                          group: GroupRecord) -> list[tuple[Candidate, Candidate]]:
    """One pair per question: a positive and a negative picked by a hash of the question id.

    `all` gives a question |P| * |N| pairs, so half-solved questions dominate the data; one pair
    each weighs every question alike. The pick is deterministic (same file, same pairs) and
    favours no sample position.
    """
    if not positives or not negatives:
        return []
    import hashlib

    h = int.from_bytes(hashlib.sha256(group.id.encode()).digest()[:8], "little")
    return [(positives[h % len(positives)], negatives[(h // len(positives)) % len(negatives)])]


def field_loc(group: GroupRecord, index: int | str, name: str) -> str:
    """ "path:line: group 'id': completions[i]: field 'name'" for a message (no path:line for a group
    that was not read from a file)."""
    where = f"{group.loc}: " if group.loc is not None else ""
    return f"{where}group {group.id!r}: completions[{index}]: field '{name}'"


def _badness(c: Candidate, group: GroupRecord) -> float:
    """wrongness + absurdity of a completion's verifier profile."""
    profile = c.completion.profile or {}
    for key in ("wrongness", "absurdity"):
        if key not in profile:
            raise DataError(f"{field_loc(group, c.index, 'profile.' + key)}: missing "
                            f"(the hard_negative rule needs verifier profiles, as lnrl-sample writes them)")
    return profile["wrongness"] + profile["absurdity"]


@register_pairing("hard_negative")
def pair_hard_negative(positives: list[Candidate], negatives: list[Candidate],
                       group: GroupRecord) -> list[tuple[Candidate, Candidate]]:
    """Every positive against the question's hardest negative: the incorrect completion with the
    lowest wrongness + absurdity (near-correct but wrong; ties: the first sampled), the hard
    negatives of arXiv 2512.19728. |P| pairs per question."""
    if not positives or not negatives:
        return []
    hardest = min(negatives, key=lambda n: _badness(n, group))  # min keeps the first of equals
    return [(p, hardest) for p in positives]


def resolve(obj: Any, dotted: str) -> Any:
    """Follow a dotted path through attributes and dict keys: "profile.wrongness"."""
    for part in dotted.split("."):
        if isinstance(obj, dict):
            if part not in obj:
                raise KeyError(part)
            obj = obj[part]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise KeyError(part)
    return obj


def make_pairs(groups: list[GroupRecord], rule: str = "all", gold_as_chosen: bool = False,
               weight_field: str | None = None, stats: dict | None = None, *, weight_clip: float | None = None,
               **rule_kwargs: Any) -> list[Pair]:
    """Pairs from groups by the named rule.

    gold_as_chosen: a question with no correct completion uses its gold solution (and gold_ref)
        as the chosen side; counted in stats["pairs_gold_chosen"].
    weight_field: dotted path into the rejected completion ("profile.wrongness") read as a weight
        w_i: a finite number >= 0, else DataError naming file, line and field. Weights are then
        scaled to mean 1 over the dataset, w_i * n / sum(w), so a weighted loss keeps the scale of
        the unweighted one. Without it every weight is 1.
    weight_clip: None, or a number >= 1: each weight is first capped at weight_clip times the median
        of the positive weights, so no pair outweighs the typical one by more than that. Without it
        a pair weighing more than WEIGHT_WARN_RATIO times the mean is warned about.
    stats (optional, updated in place): pairs, pairs_gold_chosen, questions_with_pairs,
        questions_without_pairs; with weight_field also weight_max (the largest scaled weight) and
        weights_clipped.
    """
    if rule not in PAIRING_RULES:
        raise ValueError(f"unknown pairing rule {rule!r}; registered: {sorted(PAIRING_RULES)}")
    if weight_clip is not None:
        if isinstance(weight_clip, bool) or not isinstance(weight_clip, (int, float)) \
                or not math.isfinite(weight_clip) or weight_clip < 1:
            raise ValueError(f"weight_clip={weight_clip!r}: expected a finite number >= 1 or None "
                             f"(the cap on a weight, as a multiple of the median weight)")
        if weight_field is None:
            raise ValueError(f"weight_clip={weight_clip!r} needs weight_field (without it every weight is 1)")
    fn = PAIRING_RULES[rule]
    stats = {} if stats is None else stats
    pairs: list[Pair] = []
    raw_weights: list[float] = []
    weight_locs: list[str] = []
    n_gold = n_with = 0
    for g in groups:
        positives = [Candidate(i, c) for i, c in enumerate(g.completions) if c.correct]
        negatives = [Candidate(i, c) for i, c in enumerate(g.completions) if not c.correct]
        used_gold = False
        if not positives and gold_as_chosen and negatives:
            gold = Completion(text=g.gold_solution, pred=g.answer, correct=True, ref=g.gold_ref)
            positives, used_gold = [Candidate("gold", gold)], True
        made = fn(positives, negatives, g, **rule_kwargs)
        n_with += bool(made)
        for ch, rj in made:
            weight = 1.0
            if weight_field is not None:
                loc = field_loc(g, rj.index, weight_field)
                try:
                    weight = resolve(rj.completion, weight_field)
                except KeyError:
                    raise DataError(f"{loc}: missing (weight_field needs it on every rejected completion)") from None
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                        or not math.isfinite(weight) or weight < 0:
                    raise DataError(f"{loc}: expected a finite number >= 0, got {weight!r}")
                raw_weights.append(float(weight))
                weight_locs.append(loc)
            n_gold += used_gold
            pairs.append(Pair(
                id=f"{g.id}/c{ch.index}-r{rj.index}", question=g.question,
                chosen=ch.completion.text, rejected=rj.completion.text,
                ref_chosen=ch.completion.ref, ref_rejected=rj.completion.ref, weight=float(weight),
                chosen_truncated=bool(ch.completion.truncated), rejected_truncated=bool(rj.completion.truncated),
                meta={"group_id": g.id, "chosen": ch.index, "rejected": rj.index, "rule": rule,
                      "gold_chosen": used_gold},
            ))
    if weight_field is not None and pairs:
        weights, n_clipped = _scale_weights(raw_weights, weight_field, weight_clip)
        pairs = [replace(p, weight=w) for p, w in zip(pairs, weights)]
        top = max(range(len(weights)), key=weights.__getitem__)
        stats.update(weight_max=weights[top], weights_clipped=n_clipped)
        if weights[top] > WEIGHT_WARN_RATIO:
            log.warning("%s: weight %r is %.3g times the mean weight of the %d pairs: that one pair dominates "
                        "the loss%s", weight_locs[top], raw_weights[top], weights[top], len(pairs),
                        "" if weight_clip is not None else
                        " (weight_clip caps each weight at a multiple of the median weight)")
    stats.update(pairs=len(pairs), pairs_gold_chosen=n_gold, questions_with_pairs=n_with,
                 questions_without_pairs=len(groups) - n_with)
    return pairs


def _scale_weights(raw: list[float], weight_field: str, clip: float | None) -> tuple[list[float], int]:
    """(weights clipped at clip x median positive weight, then scaled to mean 1; how many were clipped)."""
    n_clipped = 0
    if clip is not None and any(w > 0 for w in raw):
        cap = clip * statistics.median(w for w in raw if w > 0)
        n_clipped = sum(w > cap for w in raw)
        raw = [min(w, cap) for w in raw]
    top = max(raw)
    if top <= 0:
        raise DataError(f"weight_field '{weight_field}': every weight is 0, cannot normalize to mean 1")
    # Divide by the largest weight first: the sum of a few weights near 1e308 overflows to inf.
    unit = [w / top for w in raw]
    scale = len(unit) / math.fsum(unit)
    return [u * scale for u in unit], n_clipped
