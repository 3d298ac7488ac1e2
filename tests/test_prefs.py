"""Preference records: ranks, pair weights, gold counts, mean pair length, the one_per_question /
hard_negative rules."""

from __future__ import annotations

import json

import pytest

from lnrl.data.pairs import PAIRING_RULES, make_pairs
from lnrl.data.records import Completion, DataError, GroupRecord, read_groups
from lnrl.models import load_model, load_tokenizer
from lnrl.preferences import annotate, build_prefs, mean_pair_tokens, pair_weight, rank_of


def comp(text: str, correct: bool, wrongness: float = 0.0, absurdity: float = 0.0, degeneracy: float = 0.0,
         ref=None) -> Completion:
    return Completion(text=text, pred=None, correct=correct, ref=ref,
                      profile={"wrongness": wrongness, "absurdity": absurdity, "degeneracy": degeneracy})


def group(gid: str, comps: list[Completion], gold_ref=None) -> GroupRecord:
    return GroupRecord(id=gid, question=f"question {gid}?", answer="6", gold_solution="3 + 3 = 6\n#### 6",
                       completions=comps, gold_ref=gold_ref, provenance={"k": len(comps)})


@pytest.fixture
def groups() -> list[GroupRecord]:
    return [
        # q1: 2 correct, 3 incorrect; the hardest negative (lowest wrongness + absurdity) is n2 = 0.45 + 0.05
        group("q1", [comp("p1", True), comp("n1", False, 0.9, 0.6), comp("p2", True),
                     comp("n2", False, 0.45, 0.05), comp("n3", False, 0.5, 0.0)]),
        # q2: all incorrect: gold is the chosen (DPO) / gold positive (AFT)
        group("q2", [comp("m1", False, 0.7, 0.2, degeneracy=1.0), comp("m2", False, 0.4, 0.0)], gold_ref=(-9.0, 6)),
        # q3: all correct: no pairs
        group("q3", [comp("c1", True)]),
    ]


def test_pair_weight_formula_by_hand():
    # w = max(w_min, (1 - absurdity) * (2 - wrongness)): nearer (less wrong) and more plausible counts more
    assert pair_weight({"wrongness": 0.5, "absurdity": 0.2}) == pytest.approx(0.8 * 1.5)
    assert pair_weight({"wrongness": 0.4, "absurdity": 0.0}) == pytest.approx(1.6)   # a near miss
    assert pair_weight({"wrongness": 1.0, "absurdity": 0.0}) == pytest.approx(1.0)   # far off
    assert pair_weight({"wrongness": 0.4, "absurdity": 0.0}) > pair_weight({"wrongness": 0.9, "absurdity": 0.0})
    assert pair_weight({"wrongness": 0.9, "absurdity": 1.0}) == 0.05  # absurd: the floor
    assert pair_weight({"wrongness": 0.9, "absurdity": 1.0}, w_min=0.2) == 0.2
    assert pair_weight(None) == 1.0


def test_ranks():
    assert rank_of(comp("a", True, 0.3)) == 1
    assert rank_of(comp("b", False, 0.45)) == 2                      # near miss, well-formed
    assert rank_of(comp("c", False, 0.45, degeneracy=1.0)) == 3      # degenerate
    assert rank_of(comp("d", False, 0.7)) == 3                       # far off
    assert rank_of(comp("d", False, 0.7), near_wrongness=0.8) == 2
    assert rank_of(Completion(text="e", pred=None, correct=False)) == 3  # no profile: not known to be near


def test_one_per_question_rule(groups):
    stats = {}
    pairs = make_pairs(groups, rule="one_per_question", gold_as_chosen=True, stats=stats)
    assert [p.meta["group_id"] for p in pairs] == ["q1", "q2"]  # q3 has no negative
    assert pairs[0].chosen in ("p1", "p2") and pairs[0].rejected in ("n1", "n2", "n3")
    assert pairs[1].chosen == groups[1].gold_solution and pairs[1].meta["gold_chosen"]
    assert stats["pairs_gold_chosen"] == 1 and stats["questions_without_pairs"] == 1
    assert make_pairs(groups, rule="one_per_question", gold_as_chosen=True) == pairs  # deterministic
    assert len(make_pairs(groups, rule="all", gold_as_chosen=True)) == 2 * 3 + 1 * 2


def test_one_per_question_does_not_always_pick_the_first_sample():
    many = [group(f"g{i}", [comp("p1", True), comp("p2", True), comp("n1", False), comp("n2", False)])
            for i in range(40)]
    picks = {(p.chosen, p.rejected) for p in make_pairs(many, rule="one_per_question")}
    assert picks == {("p1", "n1"), ("p1", "n2"), ("p2", "n1"), ("p2", "n2")}


def test_hard_negative_rule(groups):
    pairs = make_pairs(groups, rule="hard_negative", gold_as_chosen=True)
    assert [(p.chosen, p.rejected) for p in pairs] == [("p1", "n2"), ("p2", "n2"),
                                                       (groups[1].gold_solution, "m2")]
    bare = [group("x", [comp("p", True), Completion(text="n", pred=None, correct=False)])]
    with pytest.raises(DataError, match=r"group 'x': completions\[1\]: field 'profile.wrongness'"):
        make_pairs(bare, rule="hard_negative")


def test_rules_are_registered():
    assert {"all", "one_per_question", "hard_negative"} <= set(PAIRING_RULES)


def test_weights_from_annotated_profiles_have_mean_one(groups):
    """weight_field=profile.pair_weight: w_i = (1 - ab_i)(2 - wr_i), then scaled by n / sum(w)."""
    pairs = make_pairs(annotate(groups), rule="all", gold_as_chosen=True, weight_field="profile.pair_weight")
    raw = {"n1": 0.4 * 1.1, "n2": 0.95 * 1.55, "n3": 1.5, "m1": 0.8 * 1.3, "m2": 1.6}
    expected = [raw[p.rejected] for p in pairs]
    scale = len(expected) / sum(expected)
    assert [p.weight for p in pairs] == pytest.approx([w * scale for w in expected])
    assert sum(p.weight for p in pairs) / len(pairs) == pytest.approx(1.0)


def test_build_prefs_files_and_counts(tmp_path, groups):
    stats = build_prefs(groups, tmp_path, pairing="hard_negative", gold_as_chosen=True)
    scored = read_groups(tmp_path / "groups.jsonl")
    assert [c.rank for c in scored[0].completions] == [1, 3, 1, 2, 2]
    assert [c.rank for c in scored[1].completions] == [3, 2]
    assert scored[0].completions[1].profile["pair_weight"] == pytest.approx(0.4 * 1.1)
    assert scored[0].provenance == {"k": 5}  # provenance is carried over
    assert not (tmp_path / "groups_aft.jsonl").exists()  # one file: the datamodule applies gold_as_chosen
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["rejected"] == "n2"
    assert stats["ranks"] == {1: 3, 2: 3, 3: 2}
    assert stats["gold_as_chosen"] is True and stats["groups_gold_positive"] == 1 and stats["groups_mixed"] == 1
    assert stats["pairs"]["all"]["pairs"] == 8 and stats["pairs"]["one_per_question"]["pairs"] == 2
    assert stats["pairs"]["hard_negative"]["pairs"] == 3 and stats["refs_missing"] == 8 + 2  # q2 has a gold_ref
    assert json.loads((tmp_path / "stats.json").read_text())["pairing"] == "hard_negative"


def test_build_prefs_caches_reference_scores(tmp_path, groups):
    tok = load_tokenizer({"source": "tiny"})
    model = load_model({"source": "tiny"}, tok)
    stats = build_prefs(groups, tmp_path, ref_model=model, tokenizer=tok, ref_model_name="tiny", max_length=64,
                        progress=False)
    assert stats["refs_missing"] == 0 and stats["ref_model"] == "tiny"
    scored = read_groups(tmp_path / "groups.jsonl")
    n_gold = len(tok(groups[0].gold_solution + tok.eos_token, add_special_tokens=False).input_ids)
    assert scored[0].gold_ref[1] == n_gold and scored[0].gold_ref[0] < 0
    assert not (tmp_path / "groups.unscored.jsonl").exists()
    # mean pair length: chosen and rejected n_tokens (eos included) over the pairs of each rule
    lengths = [n for g in scored for c in g.completions for n in [c.ref[1]]]
    assert stats["mean_pair_tokens"]["all"] > 0 and min(lengths) <= stats["mean_pair_tokens"]["all"] <= max(lengths)


def test_mean_pair_tokens_by_hand():
    """q1: pairs (p1,n1), (p1,n2) with refs of 10, 20, 30 tokens: mean of [10, 20, 10, 30] = 17.5."""
    g = group("q1", [comp("p1", True, ref=(-1.0, 10)), comp("n1", False, 0.9, ref=(-2.0, 20)),
                     comp("n2", False, 0.5, ref=(-3.0, 30))])
    assert mean_pair_tokens([g], "all", gold_as_chosen=False) == pytest.approx(17.5)
    assert mean_pair_tokens([g], "hard_negative", gold_as_chosen=False) == pytest.approx(20.0)  # (p1, n2)
    assert mean_pair_tokens([group("q", [comp("c", True)])], "all", gold_as_chosen=False) is None
