"""Pairs from groups: the `all` rule, gold_as_chosen, weights normalized to mean 1."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

import lnrl
from lnrl.data import PAIRING_RULES, Completion, DataError, GroupRecord, make_pairs, read_groups, register_pairing

GROUPS = Path(lnrl.__file__).parent / "fixtures" / "groups_tiny.jsonl"


def comp(text, correct, wrongness=None, ref=None):
    profile = None if wrongness is None else {"wrongness": wrongness}
    return Completion(text=text, pred=None, correct=correct, profile=profile, ref=ref)


def group(gid, comps, gold_ref=None, loc=None):
    return GroupRecord(id=gid, question=f"q{gid}", answer="1", gold_solution=f"gold{gid}", completions=comps,
                       gold_ref=gold_ref, loc=loc)


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
    with pytest.raises(DataError, match=r"^group 'a': completions\[1\]: field 'profile.wrongness': missing"):
        make_pairs(groups, weight_field="profile.wrongness")
    with pytest.raises(DataError, match="every weight is 0"):
        make_pairs([group("a", [comp("g", True), comp("b", False, 0.0)])], weight_field="profile.wrongness")
    with pytest.raises(DataError, match=r"expected a finite number >= 0, got -1"):
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


# ----------------------------------------------------------------------------- weights (issue 10)
# An Infinity weight once made every pair weight 0 or NaN (the run trained with loss 0), and one
# weight of 1e308 gave its pair all the weight (18 of 18) and the others 0, without a word.


def weighted(*wrongness, loc=None):
    """One group per weight: a correct completion and an incorrect one with that wrongness."""
    return [group(f"g{i}", [comp("good", True), comp("bad", False, w)], loc=None if loc is None else f"{loc}:{i + 1}")
            for i, w in enumerate(wrongness)]


def test_group_read_from_a_file_knows_its_line(tmp_path):
    groups = read_groups(GROUPS)
    assert [g.loc for g in groups] == [f"{GROUPS}:{i}" for i in range(1, 7)]
    # ... without the location entering the file schema or equality
    assert "loc" not in groups[0].to_json() and groups[0] == group_copy(groups[0], loc=None)
    for c in groups[1].completions:
        if not c.correct:
            c.profile.pop("wrongness")
    first_bad = next(i for i, c in enumerate(groups[1].completions) if not c.correct)
    with pytest.raises(DataError, match=rf"^{GROUPS}:2: group '{groups[1].id}': completions\[{first_bad}\]: "
                                        rf"field 'profile.wrongness': missing"):
        make_pairs(groups, weight_field="profile.wrongness")


def group_copy(g, **changes):
    from dataclasses import replace

    return replace(g, **changes)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_weight_names_file_line_and_field(bad):
    groups = weighted(0.5, bad, 1.0, loc="prefs/groups.jsonl")
    with pytest.raises(DataError, match=r"^prefs/groups.jsonl:2: group 'g1': completions\[1\]: "
                                        r"field 'profile.wrongness': expected a finite number >= 0, got -?(inf|nan)"):
        make_pairs(groups, weight_field="profile.wrongness")


def test_huge_weights_do_not_overflow_the_normalisation():
    # Two weights of 1e308 sum to inf in floating point; scaled by the largest weight first, the
    # mean-1 normalisation is exact: 1e308 : 1e308 : 1 -> 1.5, 1.5, 1.5e-308.
    pairs = make_pairs(weighted(1e308, 1e308, 1.0), weight_field="profile.wrongness")
    assert [p.weight for p in pairs] == pytest.approx([1.5, 1.5, 1.5e-308], rel=1e-12)
    assert all(math.isfinite(p.weight) for p in pairs)


def test_extreme_weight_ratio_warns_with_its_location(caplog):
    # 18 pairs, one of weight 1e308: it carries the whole dataset (18 of 18 after scaling to mean 1).
    groups = weighted(*([1.0] * 17 + [1e308]), loc="g.jsonl")
    with caplog.at_level(logging.WARNING, logger="lnrl.data.pairs"):
        pairs = make_pairs(groups, weight_field="profile.wrongness")
    assert pairs[-1].weight == pytest.approx(18.0) and pairs[0].weight == pytest.approx(18 / 1e308)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "g.jsonl:18: group 'g17': completions[1]: field 'profile.wrongness'" in msg and "18 times the mean" in msg
    assert "weight_clip" in msg
    # moderate weights (max 3x the mean here) say nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lnrl.data.pairs"):
        make_pairs(weighted(0.1, 1.0, 2.0), weight_field="profile.wrongness")
    assert not caplog.records


def test_weight_clip_caps_weights_at_a_multiple_of_the_median():
    # raw 1e308, 1, 1, 2, 0: the median of the positive weights (1, 1, 2, 1e308) is (1 + 2) / 2 = 1.5;
    # clip 4 -> cap 6: 6, 1, 1, 2, 0 (sum 10 over 5 pairs) -> x 0.5
    stats: dict = {}
    pairs = make_pairs(weighted(1e308, 1.0, 1.0, 2.0, 0.0), weight_field="profile.wrongness", stats=stats,
                       weight_clip=4.0)
    assert [p.weight for p in pairs] == pytest.approx([3.0, 0.5, 0.5, 1.0, 0.0])
    assert stats["weights_clipped"] == 1 and stats["weight_max"] == pytest.approx(3.0)
    # a clip above every weight changes nothing
    free = make_pairs(weighted(0.2, 0.6, 1.0), weight_field="profile.wrongness", weight_clip=100.0)
    assert [p.weight for p in free] == pytest.approx([1 / 3, 1.0, 5 / 3])


@pytest.mark.parametrize("clip", [0.5, 0.0, -1.0, float("nan"), float("inf")])
def test_weight_clip_must_be_a_finite_number_at_least_one(clip):
    with pytest.raises(ValueError, match=r"weight_clip=.*expected a finite number >= 1 or None"):
        make_pairs(weighted(1.0, 2.0), weight_field="profile.wrongness", weight_clip=clip)


def test_weight_clip_needs_a_weight_field():
    with pytest.raises(ValueError, match=r"weight_clip=5.0 needs weight_field"):
        make_pairs(weighted(1.0, 2.0), weight_clip=5.0)
