"""The safe arithmetic parser, step finding and every dimension of the MathVerifier profile.

Expected values are derived by hand from the definitions in lnrl/verify/profile.py (and
docs/verifier.md):

    numeric_gap = min(1, |slog(pred) - slog(ref)| / 2),  slog(x) = sign(x) * log10(1 + |x|)
    wrongness   = .40 mismatch + .15 gap + .20 arith + .10 ungrounded + .10 inconsistency + .05 degeneracy
    absurdity   = .35 degeneracy + .30 ungrounded + .25 implausible + .10 arith
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from lnrl.verify import (
    ABSURDITY_WEIGHTS,
    DIMENSIONS,
    SCORES,
    WRONGNESS_WEIGHTS,
    ErrorProfile,
    MathVerifier,
    evaluate,
    find_steps,
)
from lnrl.verify.arith import result_matches

GSM8K_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def slog(x: float) -> float:
    return math.copysign(math.log10(1 + abs(x)), x)


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    return MathVerifier()


# --- arithmetic parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2+3*4", 14),
        ("(2+3)*4", 20),
        ("10-4-3", 3),  # left-associative
        ("48/4/2", 6),
        ("2^3^2", 512),  # right-associative power
        ("-2^2", -4),  # power binds tighter than unary minus
        ("2**3", 8),
        ("35 × 3", 105),
        ("35 x 3", 105),
        ("12 ÷ 4", 3),
        ("−5 + 2", -3),  # unicode minus
        ("1,000 + 2,500", 3500),
        ("$12.50 * 2", 25),
        (".5 * 60", 30),
        ("50 * 20%", 10),
        ("5+2(14)", 33),  # implicit multiplication before a parenthesis
        ("((((1))))", 1),
    ],
)
def test_evaluate(expr, value):
    assert evaluate(expr) == pytest.approx(value)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "().__class__",
        "open('x')",
        "2x+1",  # x is a variable here, not a multiplication
        "1/0",
        "9^999",  # exponent cap
        "9" * 40 + "+1",  # number length cap
        "(" * 100 + "1" + ")" * 100,  # nesting cap
        "1 +",
        "",
        "abc",
    ],
)
def test_evaluate_refuses(expr):
    assert evaluate(expr) is None


def test_result_matches_rounding():
    assert result_matches(12 / 60, 0.2, "0.2")
    assert result_matches(10 / 3, 3.33, "3.33")  # rounded to its 2 decimals
    assert result_matches(2 / 3, 0.66, "0.66")  # truncated
    assert not result_matches(10 / 3, 3.30, "3.30")  # 3.333 is not 3.30 to two decimals
    assert not result_matches(3.5, 3, "3")  # an integer for 3.5 under 10 is an error
    assert result_matches(1000 / 7, 142, "142")  # GSM8K floors counts: <<1000/7=142>>
    assert not result_matches(4.0, 5.0, "5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", [("48/2", "24", True)]),
        ("She bakes 35 × 3 = 105 cookies.", [("35 × 3", "105", True)]),
        ("He gets 160-48=112 emails", [("160-48", "112", True)]),
        ("Weng earns 12/60 = $0.2 per minute.", [("12/60", "0.2", True)]),
        ("Betty needs 100 - 50 - 30 - 15 = 5 more.", [("100 - 50 - 30 - 15", "5", True)]),
        ("So 3 × 4 = 12 × 2 = 24 legs.", [("3 × 4", "12", True), ("12 × 2", "24", True)]),
        ("He eats 72*0.25=18 and keeps 48=48.", [("72*0.25", "18", True)]),  # "48=48" is no step
        ("Then 2 + 2 = 5 apples.", [("2 + 2", "5", False)]),
        ("2000 cases + 500 cases = 2500 cases", [("2000 cases + 500 cases", "2500", True)]),
        ("Let x = 5, so 3x-5=10", []),  # algebra is not checkable
        ("Pigs eat 8*2=<<8*2=16>>17 bales.", [("8*2", "16", False)]),  # echo after >> disagrees
    ],
)
def test_find_steps(text, expected):
    steps = find_steps(text)
    assert [(s.expr, s.stated, s.ok) for s in steps] == expected
    for s in steps:  # the step's span is where it is written
        assert text[s.start : s.end].startswith(s.expr.split()[0])


def test_find_steps_pathological_input_is_bounded():
    assert find_steps("") == []
    assert find_steps("=" * 100_000) == []
    assert find_steps("9" * 5000 + "*9=1") == []
    many = "1+1=2\n" * 5000
    assert len(find_steps(many)) <= 400


# --- ErrorProfile -----------------------------------------------------------------------------


def test_profile_fields_and_weights():
    names = [f.name for f in dataclasses.fields(ErrorProfile)]
    assert DIMENSIONS == tuple(names[:6])
    assert DIMENSIONS == (
        "answer_mismatch",
        "numeric_gap",
        "arithmetic_error",
        "ungrounded_quantity",
        "inconsistency",
        "degeneracy",
    )
    assert SCORES == ("wrongness", "absurdity") and tuple(names[6:]) == SCORES
    assert set(WRONGNESS_WEIGHTS) == set(DIMENSIONS)
    assert set(ABSURDITY_WEIGHTS) <= set(DIMENSIONS) | {"implausible_magnitude"}
    assert math.isclose(sum(WRONGNESS_WEIGHTS.values()), 1.0)
    assert math.isclose(sum(ABSURDITY_WEIGHTS.values()), 1.0)
    # wrongness is led by dims 1-5, absurdity by 4, 6 and implausible magnitudes
    assert WRONGNESS_WEIGHTS["degeneracy"] == min(WRONGNESS_WEIGHTS.values())
    top3 = sorted(ABSURDITY_WEIGHTS, key=ABSURDITY_WEIGHTS.get, reverse=True)[:3]
    assert set(top3) == {"degeneracy", "ungrounded_quantity", "implausible_magnitude"}


def test_profile_dataclass_contract():
    p = ErrorProfile(*([0.0] * 8))
    assert list(p.to_dict()) == list(DIMENSIONS) + list(SCORES)
    assert ErrorProfile.from_dict(p.to_dict()) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.wrongness = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="degeneracy"):
        ErrorProfile(0, 0, 0, 0, 0, 1.5, 0, 0)
    with pytest.raises(ValueError, match="missing"):
        ErrorProfile.from_dict({"wrongness": 0.0})


def test_unknown_version_is_refused():
    assert MathVerifier().version == "lnrl-mv-1"
    with pytest.raises(ValueError, match="unknown version"):
        MathVerifier(version="paper-v9")


# --- dimensions on hand-written solutions -----------------------------------------------------

NATALIA_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
NATALIA_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
FARM_Q = (
    "A farm has 12 cows and 8 pigs. Each cow eats 3 bales and each pig eats 2 bales a day. "
    "How many bales do they eat in 5 days?"
)
BANANA_Q = (
    "John places bananas on the basket. Each basket can hold 28 bananas. If he has 132 bananas and "
    "4 baskets, how many bananas won't he be able to place on the basket?"
)
APPLES_Q = "Tom has 3 bags with 6 apples each. How many apples does Tom have?"


def test_gold_solutions_profile_all_zero(verifier):
    for q, s, ref in [
        (NATALIA_Q, NATALIA_GOLD, "72"),  # GSM8K
        (
            BANANA_Q,
            "John will be able to place a total of 28 x 4 = 112 bananas.\n"
            "Therefore, there are 132 - 112 = 20 bananas that he won't be able to place on the basket.\n#### 20",
            "20",
        ),  # gsm_symbolic
        (APPLES_Q, "Tom has 3 bags with 6 apples each.\nSo he has 3 * 6 = 18 apples.\nThe answer is: 18", "18"),
    ]:
        assert verifier.profile(q, s, ref) == ErrorProfile(*([0.0] * 8)), s


def test_arithmetic_error_two_of_four_wrong(verifier):
    # GSM8K style: 8*2 is not 17 and 53*5 is not 260; the two slips cancel, so the answer is right.
    sol = (
        "Cows eat 12*3=<<12*3=36>>36 bales.\nPigs eat 8*2=<<8*2=17>>17 bales.\n"
        "Together 36+17=<<36+17=53>>53 bales a day.\nIn 5 days 53*5=<<53*5=260>>260 bales.\n#### 260"
    )
    a = verifier.analyze(FARM_Q, sol, "260")
    assert [s.ok for s in a.steps] == [True, False, True, False]
    p = a.profile
    assert p.arithmetic_error == 0.5
    assert (p.answer_mismatch, p.numeric_gap, p.ungrounded_quantity, p.inconsistency, p.degeneracy) == (0,) * 5
    assert p.wrongness == pytest.approx(0.20 * 0.5)
    assert p.absurdity == pytest.approx(0.10 * 0.5)


def test_answer_mismatch_and_numeric_gap_gsm_symbolic(verifier):
    sol = (
        "John will be able to place a total of 28 x 4 = 112 bananas.\n"
        "Therefore, there are 132 - 112 = 30 bananas that he won't be able to place on the basket.\n#### 30"
    )
    p = verifier.profile(BANANA_Q, sol, "20")
    gap = abs(slog(30) - slog(20)) / 2  # = log10(31/21)/2 = 0.0846
    assert p.answer_mismatch == 1.0
    assert p.numeric_gap == pytest.approx(gap)
    assert p.arithmetic_error == 0.5  # 132 - 112 is not 30
    assert (p.ungrounded_quantity, p.inconsistency, p.degeneracy) == (0, 0, 0)
    assert p.wrongness == pytest.approx(0.40 + 0.15 * gap + 0.20 * 0.5)
    assert p.absurdity == pytest.approx(0.10 * 0.5)


@pytest.mark.parametrize(
    ("pred", "ref", "gap"),
    [
        ("72", "72", 0.0),
        ("72.00", "72", 0.0),
        ("73", "72", abs(slog(73) - slog(72)) / 2),  # a near miss: 0.003
        ("720", "72", abs(slog(720) - slog(72)) / 2),  # an order of magnitude: ~0.5
        ("72000", "72", 1.0),  # three orders: saturates
        ("-72", "72", 1.0),  # sign flip: |2 * log10(73)| / 2 > 1
        ("x+1", "72", 1.0),  # not a number
    ],
)
def test_numeric_gap(verifier, pred, ref, gap):
    p = verifier.profile("q", f"#### {pred}", ref)
    assert p.numeric_gap == pytest.approx(gap)
    assert p.answer_mismatch == (0.0 if gap == 0 else 1.0)


def test_numeric_gap_is_one_without_answer(verifier):
    p = verifier.profile("q", "I am not sure how to do this", "72")
    assert (p.answer_mismatch, p.numeric_gap, p.degeneracy) == (1.0, 1.0, 1.0)


def test_ungrounded_quantity_metamath(verifier):
    # 17 is in neither the question nor the solution before it: 1 of 6 operands.
    sol = "Tom has 3 * 6 = 18 apples.\nHe also finds 3 * 17 = 51 apples.\nSo he has 18 + 51 = 69 apples.\nThe answer is: 69"
    a = verifier.analyze(APPLES_Q, sol, "18")
    assert a.ungrounded == (17.0,) and a.n_operands == 6
    p = a.profile
    assert p.ungrounded_quantity == pytest.approx(1 / 6)
    gap = abs(slog(69) - slog(18)) / 2
    assert p.wrongness == pytest.approx(0.40 + 0.15 * gap + 0.10 / 6)
    assert p.absurdity == pytest.approx(0.30 / 6)


def test_grounding_sources(verifier):
    q = "Ann has five boxes with 8 pens in each. She gives away 25% of them. How many pens are left?"
    # 5 from "five", 8 from the question, 40 is an earlier result, 0.25 from "25%", 30 earlier.
    sol = "5 * 8 = 40 pens.\n40 * 0.25 = 10 pens.\n40 - 10 = 30 pens.\n#### 30"
    assert verifier.profile(q, sol, "30").ungrounded_quantity == 0.0
    # 13 appears in the solution before it is used: grounded; 29 never appears: ungrounded.
    sol2 = "There are 13 days left.\n13 * 8 = 104 pens.\n104 + 29 = 133 pens.\n#### 133"
    a = verifier.analyze(q, sol2, "30")
    assert a.ungrounded == (29.0,) and a.profile.ungrounded_quantity == pytest.approx(1 / 4)
    # unit words ground their conversions: "week" gives 7, "year" 52; 9 is not implied by anything
    q2 = "Sam works 5 hours every day of the week. How many hours does he work in a year?"
    a = verifier.analyze(q2, "5 * 7 = 35 hours.\n35 * 52 = 1820 hours.\n1820 + 9 = 1829\n#### 1829", "1820")
    assert a.ungrounded == (9.0,) and a.n_operands == 6
    # a number used before it is first written is not grounded by the later mention
    sol3 = "13 * 8 = 104 pens.\nThere are 13 days left.\n#### 104"
    assert verifier.analyze(q, sol3, "30").ungrounded == (13.0,)


def test_inconsistency_final_differs_from_last_result(verifier):
    p = verifier.profile(APPLES_Q, "Tom has 3 * 6 = 18 apples.\n#### 20", "18")
    assert p.inconsistency == 1.0 and p.arithmetic_error == 0.0
    # the answer derived in words after the last step is consistent
    sol = "He pays 4 x 13 = 52 dollars at the second shop.\nThe first shop is cheaper at 50 dollars.\n#### 50"
    assert verifier.profile("q", sol, "50").inconsistency == 0.0


def test_inconsistency_conflicting_answers(verifier):
    a = verifier.analyze(APPLES_Q, "Tom has 18 apples.\nThe answer is: 18\n#### 17", "18")
    assert a.pred == "17"  # "####" outranks "The answer is"
    assert a.components["conflicting"] == 1.0 and a.components["final_vs_last"] == 0.0
    assert a.profile.inconsistency == 1.0
    # the same answer stated twice is not a conflict
    assert verifier.profile(APPLES_Q, "So 3 * 6 = 18.\nThe answer is: 18\n#### 18.0", "18").inconsistency == 0.0


def test_degeneracy_truncated(verifier):
    p = verifier.profile(NATALIA_Q, NATALIA_GOLD, "72", truncated=True)
    assert p.degeneracy == 1.0 and p.answer_mismatch == 0.0
    assert p.wrongness == pytest.approx(0.05) and p.absurdity == pytest.approx(0.35)


def test_degeneracy_looping(verifier):
    sol = "Tom has 3 * 6 = 18 apples.\n" + "So Tom has 18 apples.\n" * 30 + "#### 18"
    a = verifier.analyze(APPLES_Q, sol, "18")
    # 32 lines, 3 distinct: 29/32 = 0.91 duplicated, above the 0.75 top of the ramp
    assert a.components["repetition"] == 1.0 and a.profile.degeneracy == 1.0
    # one repeated line among many distinct ones is fine
    assert verifier.profile(NATALIA_Q, NATALIA_GOLD + "\n", "72").degeneracy == 0.0


def test_degeneracy_garbage(verifier):
    # 20 non-space characters, 7 alphanumeric: share 0.35 -> (0.50 - 0.35) / 0.30 = 0.5
    a = verifier.analyze("q", "abcde ????????????? 18", "18")
    assert a.pred == "18"
    assert a.components["garbage"] == pytest.approx(0.5) and a.profile.degeneracy == pytest.approx(0.5)
    # a 100-character token in 117 non-space characters: 2 * 100 / 117 > 1
    assert verifier.profile("q", "a" * 100 + " and 18 apples\n#### 18", "18").degeneracy == 1.0


def test_absurdity_implausible_magnitudes(verifier):
    p = verifier.profile("q", "#### -5", "5")  # negative for a positive count
    gap = abs(slog(-5) - slog(5)) / 2
    assert p.numeric_gap == pytest.approx(gap) and p.degeneracy == 0.0
    assert p.absurdity == pytest.approx(0.25 * 1.0)
    assert p.wrongness == pytest.approx(0.40 + 0.15 * gap)
    assert verifier.analyze("q", "#### 180000", "18").components["implausible_magnitude"] == 1.0
    assert verifier.analyze("q", "#### 4.5", "4").components["implausible_magnitude"] == 0.5
    assert verifier.analyze("q", "#### 25", "18").components["implausible_magnitude"] == 0.0


def test_math_verify_fallback(verifier):
    p = verifier.profile("q", "So $x = \\boxed{\\frac{3}{4}}$.", "0.75")
    assert p.answer_mismatch == 0.0 and p.numeric_gap == 0.0
    assert verifier.profile("q", "The answer is $x+1$", "1+x").answer_mismatch == 0.0


# --- batch API and malformed input -----------------------------------------------------------


def test_profile_batch_matches_profile(verifier):
    items = [
        {"question": NATALIA_Q, "solution": NATALIA_GOLD, "reference_answer": "72"},
        {"question": APPLES_Q, "solution": "#### 20", "answer": "18", "truncated": True},
        (APPLES_Q, "3 * 6 = 18\n#### 18", "18"),
        (APPLES_Q, "3 * 6 = 18", "18", True),
    ]
    expected = [
        verifier.profile(NATALIA_Q, NATALIA_GOLD, "72"),
        verifier.profile(APPLES_Q, "#### 20", "18", truncated=True),
        verifier.profile(APPLES_Q, "3 * 6 = 18\n#### 18", "18"),
        verifier.profile(APPLES_Q, "3 * 6 = 18", "18", truncated=True),
    ]
    assert verifier.profile_batch(items) == expected
    assert verifier.profile_batch(iter(items)) == expected  # any iterable
    assert verifier.profile_batch([]) == []


def test_profile_batch_bad_items(verifier):
    with pytest.raises(ValueError, match=r"item 1: missing field 'solution'"):
        verifier.profile_batch([(APPLES_Q, "#### 18", "18"), {"question": APPLES_Q, "answer": "18"}])
    with pytest.raises(ValueError, match=r"item 0: expected a dict"):
        verifier.profile_batch(["just a string"])


@pytest.mark.parametrize(
    "solution",
    [
        "",
        "   \n\n  ",
        "x" * 1_000_000,
        "1" * 200_000,
        "∑∫√ 日本語の解答です。答えは十八。",
        "$$$ %%% ^^^ ((( ))) <<>> #### ####",
        "<<" + "9^9^9^9" * 40 + "=1>>",
        "(" * 5000 + "1" + ")" * 5000 + " = 1",
        "2+2=4\n" * 50_000,
        "\\boxed{" * 1000,
        "The answer is \\boxed{\\frac{",
        "\x00\x01\x02 #### \x00",
    ],
)
def test_malformed_input_never_raises(verifier, solution):
    for q, ref in [(APPLES_Q, "18"), ("", ""), ("日本", "\\frac{1}{2}")]:
        p = verifier.profile(q, solution, ref)
        assert all(0.0 <= v <= 1.0 for v in p.to_dict().values())
    assert verifier.profile(None, solution, 18).degeneracy >= 0.0  # type: ignore[arg-type]


# --- real GSM8K gold solutions ---------------------------------------------------------------


@pytest.mark.skipif(not GSM8K_TRAIN.exists(),
                    reason=f"needs ../shared: the shared GSM8K training split {GSM8K_TRAIN} is absent")
def test_gsm8k_gold_solutions_profile_near_zero(verifier):
    rows = []
    with GSM8K_TRAIN.open() as f:
        for _, line in zip(range(400), f):
            rows.append(json.loads(line))
    items = [(r["question"], r["answer"], r["answer"].split("####")[-1].strip()) for r in rows]
    profiles = verifier.profile_batch(items)
    exceptions = [(it[1], p) for it, p in zip(items, profiles) if p.wrongness > 0]
    for sol, p in exceptions:  # shown with -s; most are real slips in the gold data ("192*100=$1920")
        print("---\n" + sol + "\n", {k: round(v, 3) for k, v in p.to_dict().items() if v})
    n = len(profiles)
    assert all(p.answer_mismatch == 0 and p.numeric_gap == 0 for p in profiles)
    assert sum(p.arithmetic_error == 0 for p in profiles) / n >= 0.99
    assert sum(p.ungrounded_quantity == 0 for p in profiles) / n >= 0.97
    assert sum(p.inconsistency == 0 for p in profiles) / n >= 0.99
    assert sum(p.degeneracy == 0 for p in profiles) / n >= 0.99
    assert len(exceptions) / n <= 0.05


def test_gsm_symbolic_gold_solutions_profile_near_zero(verifier):
    reasoning_gym = pytest.importorskip("reasoning_gym")
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=60, seed=7)
    profiles = [verifier.profile(x["question"], x["metadata"]["answer_cot"], x["answer"]) for x in ds]
    assert all(p.answer_mismatch == 0 for p in profiles)
    # a few templates floor a product ("17*0.5=8") or use outside knowledge (26 letters)
    assert sum(p.wrongness == 0 for p in profiles) / len(profiles) >= 0.9


def test_is_degenerate_ignores_truncation_and_missing_answers():
    """Degeneration is looping or garbage text, judged on the text alone: a long sane solution that was cut
    (the degeneracy dimension counts it) or that gives no final answer is not degenerate."""
    from lnrl.verify import MathVerifier, is_degenerate

    sane_cut = "He buys 3 packs of 12 eggs, so 3 * 12 = 36 eggs. He uses 4 eggs a day for"
    loop = "So the answer is 36. " * 12
    garbage = "#### $$ ## ** -- ++ == ;; ## ** -- ++ == ;; $$ %% ^^ && ** (( ))"
    assert not is_degenerate(sane_cut)
    assert MathVerifier().profile("q", sane_cut, "36", truncated=True).degeneracy == 1.0
    assert is_degenerate(loop) and is_degenerate(garbage)
    assert not is_degenerate("He has 3 + 4 = 7 apples.\n#### 7")
