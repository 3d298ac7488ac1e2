"""Pairs from groups: the `all` rule, gold_as_chosen, weights normalized to mean 1."""

from __future__ import annotations

from pathlib import Path

import pytest

import lnrl
from lnrl.data import PAIRING_RULES, Completion, DataError, GroupRecord, make_pairs, read_groups, register_pairing

GROUPS = Path(lnrl.__file__).parent / "fixtures" / "groups_tiny.jsonl"


def comp(text, correct, wrongness=None, ref=None):
    profile = None if wrongness is None else {"wrongness": wrongness}
    return Completion(text=text, pred=None, correct=correct, profile=profile, ref=ref)


def group(gid, comps, gold_ref=None):
    return GroupRecord(id=gid, question=f"q{gid}", answer="1", gold_solution=f"gold{gid}", completions=comps,
                       gold_ref=gold_ref)


def test_all_rule_counts_on_the_fixture():
    # correct x incorrect per question, read off the fixture by hand:
    # t43 2x2=4, t16 1x3=3, t10 4x0=0, t50 0x4=0, t31 3x1=3, t6 2x2=4 -> 14
    stats: dict = {}
    pairs = make_pairs(read_groups(GROUPS), stats=stats)
    assert len(pairs) == 14
    assert stats == {"pairs": 14, "pairs_gold_chosen": 0, "questions_with_pairs": 4, "questions_without_pairs": 2}
    assert all(p.weight == 1.0 for p in pairs)
    # with gold_as_chosen the all-incorrect t50 adds gold x 4 wrong; the all-correct t10 still gives nothing
    pairs = make_pairs(read_groups(GROUPS), gold_as_chosen=True, stats=stats)
    assert len(pairs) == 18 and stats["pairs_gold_chosen"] == 4 and stats["questions_with_pairs"] == 5
    gold = [p for p in pairs if p.meta["gold_chosen"]]
    t50 = next(g for g in read_groups(GROUPS) if g.id == "gsm_symbolic/t50/0")
    assert {p.chosen for p in gold} == {t50.gold_solution} and all(p.ref_chosen == t50.gold_ref for p in gold)
    assert [p.rejected for p in gold] == [c.text for c in t50.completions]


def test_pairs_carry_texts_and_cached_refs():
    g = group("a", [comp("good", True, ref=(-1.0, 3)), comp("bad1", False, ref=(-2.0, 4)),
                    comp("bad2", False, ref=(-3.0, 5))])
    pairs = make_pairs([g])
    assert [(p.chosen, p.rejected) for p in pairs] == [("good", "bad1"), ("good", "bad2")]
    assert [(p.ref_chosen, p.ref_rejected) for p in pairs] == [((-1.0, 3), (-2.0, 4)), ((-1.0, 3), (-3.0, 5))]
    assert pairs[0].question == "qa" and pairs[0].id == "a/c0-r1" and pairs[1].meta["rejected"] == 2
    assert len({p.id for p in make_pairs(read_groups(GROUPS), gold_as_chosen=True)}) == 18  # ids unique


def test_weights_are_normalized_to_mean_one():
    # raw wrongness of the rejected side: 0.2, 0.6, 1.0; sum 1.8 over 3 pairs -> w * 3 / 1.8
    groups = [group("a", [comp("g", True), comp("b1", False, 0.2), comp("b2", False, 0.6)]),
              group("b", [comp("g", True), comp("b", False, 1.0)])]
    pairs = make_pairs(groups, weight_field="profile.wrongness")
    assert [p.weight for p in pairs] == pytest.approx([1 / 3, 1.0, 5 / 3])
    fixture = make_pairs(read_groups(GROUPS), gold_as_chosen=True, weight_field="profile.wrongness")
    assert sum(p.weight for p in fixture) / len(fixture) == pytest.approx(1.0)


def test_weight_field_errors():
    groups = [group("a", [comp("g", True), comp("b", False)])]  # rejected has no profile
    with pytest.raises(DataError, match=r"group 'a': completions\[1\]: field 'profile.wrongness': missing"):
        make_pairs(groups, weight_field="profile.wrongness")
    with pytest.raises(DataError, match="every weight is 0"):
        make_pairs([group("a", [comp("g", True), comp("b", False, 0.0)])], weight_field="profile.wrongness")
    with pytest.raises(DataError, match=r"expected a number >= 0, got -1"):
        make_pairs([group("a", [comp("g", True), comp("b", False, -1)])], weight_field="profile.wrongness")
    with pytest.raises(ValueError, match="unknown pairing rule 'best'"):
        make_pairs(groups, rule="best")


def test_registering_a_rule():
    name = "first_only_test"

    @register_pairing(name)
    def first_only(positives, negatives, group):
        return [(positives[0], negatives[0])] if positives and negatives else []

    try:
        assert len(make_pairs(read_groups(GROUPS), rule=name)) == 4  # t43, t16, t31, t6
        with pytest.raises(ValueError, match="already registered"):
            register_pairing(name)(first_only)
    finally:
        PAIRING_RULES.pop(name)
