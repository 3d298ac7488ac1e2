"""Preference pairs for DPO, derived from group records by a named pairing rule.

AFT and DPO train on the same sampled groups; a pairing rule decides which (chosen, rejected)
pairs a group yields. A rule is a function

    rule(positives: list[Candidate], negatives: list[Candidate], group: GroupRecord, **kw)
        -> list[tuple[Candidate, Candidate]]

registered in PAIRING_RULES with @register_pairing("name"). `positives` are the correct
completions, or just the gold solution when the group has none and gold_as_chosen is on;
`negatives` are the incorrect completions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lnrl.data.records import Completion, DataError, GroupRecord


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


def _badness(c: Candidate, group: GroupRecord) -> float:
    """wrongness + absurdity of a completion's verifier profile."""
    profile = c.completion.profile or {}
    for key in ("wrongness", "absurdity"):
        if key not in profile:
            raise DataError(f"group {group.id!r}: completions[{c.index}]: field 'profile.{key}': missing "
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
               weight_field: str | None = None, stats: dict | None = None, **rule_kwargs: Any) -> list[Pair]:
    """Pairs from groups by the named rule.

    gold_as_chosen: a question with no correct completion uses its gold solution (and gold_ref)
        as the chosen side; counted in stats["pairs_gold_chosen"].
    weight_field: dotted path into the rejected completion ("profile.wrongness") read as a float
        weight w_i >= 0; weights are then scaled to mean 1 over the dataset, w_i * n / sum(w), so a
        weighted loss keeps the scale of the unweighted one. Without it every weight is 1.
    stats (optional, updated in place): pairs, pairs_gold_chosen, questions_with_pairs,
        questions_without_pairs.
    """
    if rule not in PAIRING_RULES:
        raise ValueError(f"unknown pairing rule {rule!r}; registered: {sorted(PAIRING_RULES)}")
    fn = PAIRING_RULES[rule]
    stats = {} if stats is None else stats
    pairs: list[Pair] = []
    raw_weights: list[float] = []
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
                try:
                    weight = resolve(rj.completion, weight_field)
                except KeyError:
                    raise DataError(f"group {g.id!r}: completions[{rj.index}]: field '{weight_field}': missing "
                                    f"(weight_field needs it on every rejected completion)") from None
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                    raise DataError(f"group {g.id!r}: completions[{rj.index}]: field '{weight_field}': "
                                    f"expected a number >= 0, got {weight!r}")
                raw_weights.append(float(weight))
            n_gold += used_gold
            pairs.append(Pair(
                id=f"{g.id}/c{ch.index}-r{rj.index}", question=g.question,
                chosen=ch.completion.text, rejected=rj.completion.text,
                ref_chosen=ch.completion.ref, ref_rejected=rj.completion.ref, weight=float(weight),
                meta={"group_id": g.id, "chosen": ch.index, "rejected": rj.index, "rule": rule,
                      "gold_chosen": used_gold},
            ))
    if weight_field is not None and pairs:
        total = sum(raw_weights)
        if total <= 0:
            raise DataError(f"weight_field '{weight_field}': every weight is 0, cannot normalize to mean 1")
        scale = len(pairs) / total
        pairs = [replace(p, weight=p.weight * scale) for p in pairs]
    stats.update(pairs=len(pairs), pairs_gold_chosen=n_gold, questions_with_pairs=n_with,
                 questions_without_pairs=len(groups) - n_with)
    return pairs
