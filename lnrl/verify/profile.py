"""The MathVerifier error profile: six named error dimensions and two scores, each in [0, 1].

Lu et al. 2025 (arXiv 2512.19728) decompose a solution into a six-dimensional error profile
and aggregate it into wrongness and absurdity; their exact definitions are not public, so these
are our own, documented in docs/verifier.md and here, exactly as coded:

1. ``answer_mismatch``   1 if the extracted final answer is not equivalent to the reference
                         (or there is none), else 0.
2. ``numeric_gap``       0 if the answers match; else min(1, |slog(pred) - slog(ref)| / 2) with
                         slog(x) = sign(x) * log10(1 + |x|): 72 vs 73 -> 0.003, 72 vs 144 -> 0.15,
                         x10 -> ~0.5, x100 -> ~1, a sign flip -> 1. 1 when there is no answer or
                         either side is not a plain number.
3. ``arithmetic_error``  wrong steps / checkable steps (0 without steps); see lnrl.verify.arith.
4. ``ungrounded_quantity`` operands of steps that appear neither in the question nor earlier in
                         the solution (results of earlier steps count; "25%" also gives 0.25,
                         "twice" 2, "week" 7, ...) nor in WHITELIST, over all operands of all
                         steps (0 without steps).
5. ``inconsistency``     max of: the final answer differs from the last step's result (stated
                         or computed) and is not written in the text after that step either
                         (final-answer lines excluded), and the solution states conflicting final
                         answers (distinct values among its "####", "The answer is", \\boxed{}).
6. ``degeneracy``        max of: no extractable answer, truncated (flag or over
                         MAX_SOLUTION_CHARS), repetition (duplicate lines / looping 4-grams) and
                         garbage (few alphanumerics, very long tokens).

``wrongness = sum(WRONGNESS_WEIGHTS[d] * dim)`` and
``absurdity = sum(ABSURDITY_WEIGHTS[d] * dim)`` where absurdity also uses
``implausible_magnitude`` (negative or non-integer when the reference is a positive integer,
or off by a factor of 100-1000 and more). Weights are non-negative and sum to 1, so both are in
[0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from functools import lru_cache

from lnrl.verify.answers import (
    _ANSWER_IS_RE,
    _HASHES_RE,
    _clean,
    _last_boxed,
    answers_match,
    extract_answer_with_kind,
    numbers_match,
    parse_number,
)
from lnrl.verify.arith import Step, find_steps, result_matches

__all__ = [
    "ErrorProfile",
    "Analysis",
    "MathVerifier",
    "DIMENSIONS",
    "SCORES",
    "VERIFIER_VERSION",
    "WRONGNESS_WEIGHTS",
    "ABSURDITY_WEIGHTS",
    "WHITELIST",
    "DEGENERATE_AT",
    "FinalAnswer",
    "final_answer",
    "answer_mismatch",
    "numeric_gap",
    "arithmetic_error",
    "ungrounded_quantity",
    "inconsistency",
    "degeneracy",
    "is_degenerate",
    "is_near_miss",
    "NEAR_WRONGNESS",
    "implausible_magnitude",
]

VERIFIER_VERSION = "lnrl-mv-1"
SUPPORTED_VERSIONS = (VERIFIER_VERSION,)


@dataclass(frozen=True)
class ErrorProfile:
    """Six error dimensions and two aggregate scores of one solution, each in [0, 1]."""

    answer_mismatch: float
    numeric_gap: float
    arithmetic_error: float
    ungrounded_quantity: float
    inconsistency: float
    degeneracy: float
    wrongness: float
    absurdity: float

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                raise ValueError(f"ErrorProfile.{f.name} must be a number in [0, 1], got {v!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ErrorProfile:
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise ValueError(f"ErrorProfile: missing field(s) {missing}")
        return cls(**{f.name: float(d[f.name]) for f in fields(cls)})


SCORES = ("wrongness", "absurdity")
DIMENSIONS = tuple(f.name for f in fields(ErrorProfile) if f.name not in SCORES)

# wrongness is led by dims 1-5; degeneracy alone (a well-formed answer cut short) weighs little.
WRONGNESS_WEIGHTS = {
    "answer_mismatch": 0.40,
    "numeric_gap": 0.15,
    "arithmetic_error": 0.20,
    "ungrounded_quantity": 0.10,
    "inconsistency": 0.10,
    "degeneracy": 0.05,
}
# absurdity is led by degeneracy, made-up quantities and implausible magnitudes.
ABSURDITY_WEIGHTS = {
    "degeneracy": 0.35,
    "ungrounded_quantity": 0.30,
    "implausible_magnitude": 0.25,
    "arithmetic_error": 0.10,
}

# Operands that need no grounding anywhere: 0, small counting constants (1-4: "4 legs", "3 feet
# in a yard"), 10, and the commonest conversions (12 a dozen / months a year, 24 hours a day, 60
# minutes an hour, 0.01 / 100 per cent, 1000 per mille). Other conversions are grounded by their
# unit word in the text ("week" -> 7, "month" -> 4 and 30, "year" -> 12, 52 and 365, ...).
WHITELIST = frozenset({0.0, 0.01, 1.0, 2.0, 3.0, 4.0, 10.0, 12.0, 24.0, 60.0, 100.0, 1000.0})

# A solution is degenerate when its degeneracy is at least this (no answer, truncated, looping or
# garbage text): val/degenerate_rate, the samples' degenerate_rate and rank 2 of lnrl.preferences use it.
DEGENERATE_AT = 0.5

MAX_SOLUTION_CHARS = 20_000  # longer is degenerate; analysis looks at this much
LONG_TOKEN_CHARS = 60  # no word or number of a solution needs 60 characters (annotations aside)
NGRAM = 4
# Repetition: gold GSM8K train solutions repeat at most 31% of their 4-grams (99.9th percentile
# 26%, median 0); a looping generation repeats most of them. Linear ramp from 0.35 to 0.75.
REPEAT_LO, REPEAT_HI = 0.35, 0.75
# Garbage: gold GSM8K solutions are at least 53% alphanumeric (non-space characters; 99.9% are
# above 62%). Linear ramp from 0 at 50% to 1 at 20%.
ALNUM_LO, ALNUM_HI = 0.20, 0.50
MIN_GARBAGE_CHARS = 16  # below this many non-space, non-"#" characters the share is not judged

_NUM_IN_TEXT_RE = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:\s*(%|percent|cents?\b))?(?:/(\d+(?:\.\d+)?))?"
)
_WORD_VALUES: dict[str, tuple[float, ...]] = {
    "zero": (0,), "one": (1,), "two": (2,), "three": (3,), "four": (4,), "five": (5,), "six": (6,),
    "seven": (7,), "eight": (8,), "nine": (9,), "ten": (10,), "eleven": (11,), "twelve": (12,),
    "thirteen": (13,), "fourteen": (14,), "fifteen": (15,), "sixteen": (16,), "seventeen": (17,),
    "eighteen": (18,), "nineteen": (19,), "twenty": (20,), "thirty": (30,), "forty": (40,),
    "fifty": (50,), "sixty": (60,), "seventy": (70,), "eighty": (80,), "ninety": (90,),
    "hundred": (100,), "thousand": (1000,), "million": (1_000_000,),
    "half": (2, 0.5), "halves": (2, 0.5), "twice": (2,), "double": (2,), "doubled": (2,),
    "triple": (3,), "tripled": (3,), "thrice": (3,), "quadruple": (4,),
    "third": (3, 1 / 3), "thirds": (3, 1 / 3), "quarter": (4, 0.25, 25), "quarters": (4, 0.25, 25),
    "fourth": (4, 0.25), "fourths": (4, 0.25), "fifth": (5, 0.2), "fifths": (5, 0.2),
    "sixth": (6,), "seventh": (7,), "eighth": (8, 0.125), "tenth": (10, 0.1),
    "dozen": (12,), "dozens": (12,), "score": (20,), "pair": (2,), "pairs": (2,),
    "week": (7,), "weeks": (7,), "hour": (60,), "hours": (60,), "minute": (60,), "minutes": (60,),
    "year": (12, 52, 365), "years": (12, 52, 365), "day": (24, 7), "days": (24, 7),
    "month": (4, 30, 12), "months": (4, 30, 12), "second": (60, 3600), "seconds": (60, 3600),
    "yearly": (12, 52, 365), "monthly": (4, 30), "weekly": (7, 52), "daily": (7, 365),
    "cent": (100, 0.01), "cents": (100, 0.01), "percent": (100, 0.01), "penny": (0.01,),
    "pennies": (0.01,), "nickel": (0.05, 5), "nickels": (0.05, 5), "dime": (0.1, 10),
    "dimes": (0.1, 10), "feet": (12,), "foot": (12,),
    "yard": (3,), "yards": (3,), "pound": (16,), "pounds": (16,), "gallon": (4, 128), "gallons": (4, 128),
}  # fmt: skip
_SPACED_RE = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?![\d/,.])")
_PER_HUNDRED_RE = re.compile(r"\s*(?:%|percent|cents?\b)", re.IGNORECASE)
# Every word, looked up in _WORD_VALUES (one alternation of all the keys is 5x slower).
_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_ANNOTATION_RE = re.compile(r"<<[^<>\n]{0,300}>>")
_ALNUM_RE = re.compile(r"[^\W_]", re.UNICODE)
_SPACE_RE = re.compile(r"\s+")


def _key(v: float) -> float:
    return round(v, 6)


def _text_quantities(text: str) -> list[tuple[int, float]]:
    """(position, value) of every quantity in text: numbers; "25%", "25 percent", "25 cents" also
    as 0.25; "3/4" also as 0.75; number and unit words ("twice" -> 2, "half" -> 0.5 and 2,
    "hours" -> 60, "dimes" -> 0.1 and 10)."""
    out: list[tuple[int, float]] = []
    for m in _NUM_IN_TEXT_RE.finditer(text):
        v = float(m.group(1).replace(",", ""))
        out.append((m.start(), v))
        if m.group(2):
            # "25%" is used as 0.25, and as 1.25 / 0.75 for "25% more / less"
            out.append((m.start(), v / 100))
            out.append((m.start(), 1 + v / 100))
            out.append((m.start(), 1 - v / 100))
        if m.group(3):
            d = float(m.group(3))
            out.append((m.start(3), d))
            if d:
                out.append((m.start(), v / d))
    for m in _SPACED_RE.finditer(text):
        # "18 000" is one number too (its parts stay above: "on day 5 100 boxes")
        out.append((m.start(), float(m.group(0).replace(" ", ""))))
    for m in _WORD_RE.finditer(text):
        values = _WORD_VALUES.get(m.group(0).lower())
        if values is None:
            continue
        per_hundred = _PER_HUNDRED_RE.match(text, m.end()) is not None  # "twenty percent"
        for v in values:
            out.append((m.start(), float(v)))
            if per_hundred:
                out.append((m.start(), v / 100))
    out.sort(key=lambda t: t[0])
    return out


@lru_cache(maxsize=8192)
def _question_keys(question: str) -> frozenset[float]:
    # Cached: the k sampled solutions of a question share it.
    return frozenset(_key(v) for _, v in _text_quantities(question[:MAX_SOLUTION_CHARS]))


@lru_cache(maxsize=8192)
def _reference_value(reference: str) -> Fraction | None:
    return parse_number(reference)


def _is_final_line(line: str) -> bool:
    return "####" in line or "\\boxed" in line or "answer is" in line.lower()


def _slog(x: float) -> float:
    return math.copysign(math.log10(1.0 + abs(x)), x)


def _clip(x: float) -> float:
    return 0.0 if x <= 0.0 else 1.0 if x >= 1.0 else float(x)


# --- pieces shared by the dimensions --------------------------------------------------------

def final_statements(text: str) -> list[str]:
    """Every "####" / "answer is" / boxed final answer of a text, in order."""
    out = []
    for rx in (_HASHES_RE, _ANSWER_IS_RE):
        for raw in rx.findall(text):
            a = _clean(raw)
            if a is not None:
                out.append(a)
    if "boxed" in text or "fbox" in text:
        b = _last_boxed(text)
        if b is not None and (a := _clean(b)) is not None:
            out.append(a)
    return out


def _answer_key(a: str) -> object:
    v = parse_number(a)
    return v if v is not None else a.replace(" ", "")


def _repetition(text: str) -> float:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    dup_lines = (len(lines) - len(set(lines))) / len(lines) if len(lines) >= 3 else 0.0
    words = text.split()
    if len(words) >= 2 * NGRAM:
        grams = list(zip(*(words[i:] for i in range(NGRAM))))
        rep = 1.0 - len(set(grams)) / len(grams)
    else:
        rep = 0.0
    return _clip((max(dup_lines, rep) - REPEAT_LO) / (REPEAT_HI - REPEAT_LO))


def _garbage(text: str) -> float:
    # "#" is markup ("#### 72", "### Step 1"), not text; a share needs a few characters.
    compact = _SPACE_RE.sub("", text).replace("#", "")
    if not compact:
        return 1.0 if text.strip() else 0.0  # only "#"s: garbage; empty: "no answer" says it
    alnum = len(_ALNUM_RE.findall(compact)) / len(compact)
    few_alnum = _clip((ALNUM_HI - alnum) / (ALNUM_HI - ALNUM_LO)) if len(compact) >= MIN_GARBAGE_CHARS else 0.0
    # calculator annotations glue a whole computation into one token: not garbage
    plain = _ANNOTATION_RE.sub("", text) if "<<" in text else text
    long_chars = sum(len(t) for t in plain.split() if len(t) > LONG_TOKEN_CHARS)
    long_tokens = _clip(2.0 * long_chars / len(compact))
    return max(few_alnum, long_tokens)


# --- one function per dimension (the module docstring defines each) ----------------------------

@dataclass(frozen=True)
class FinalAnswer:
    """The solution's final answer against the reference: what dimensions 1-2 and the magnitude judge."""

    pred: str | None
    extraction: str
    pred_value: Fraction | None  # the answers as exact numbers, when both are plain numbers
    ref_value: Fraction | None
    matched: bool


def final_answer(solution: str, reference: str) -> FinalAnswer:
    pred, kind = extract_answer_with_kind(solution)
    ref_v = _reference_value(reference)
    pred_v = parse_number(pred) if pred is not None else None
    if pred_v is not None and ref_v is not None:
        matched = numbers_match(pred_v, ref_v)  # decided without math-verify
    else:
        matched = answers_match(pred, reference)
    return FinalAnswer(pred, kind, pred_v, ref_v, matched)


def answer_mismatch(final: FinalAnswer) -> float:
    """1. 1 unless the final answer is equivalent to the reference."""
    return 0.0 if final.matched else 1.0


def numeric_gap(final: FinalAnswer) -> float:
    """2. 0 on a match; else min(1, |slog(pred) - slog(ref)| / 2); 1 when either is not a plain number."""
    if final.matched:
        return 0.0
    if final.pred_value is None or final.ref_value is None:
        return 1.0
    return _clip(abs(_slog(float(final.pred_value)) - _slog(float(final.ref_value))) / 2.0)


def arithmetic_error(steps: Sequence[Step]) -> float:
    """3. Wrong steps / checkable steps (0 without steps)."""
    return sum(not s.ok for s in steps) / len(steps) if steps else 0.0


def ungrounded_quantity(question: str, text: str, steps: Sequence[Step]) -> tuple[float, list[float], int]:
    """4. (ungrounded operands over all operands of all steps, 0 without steps; those operands; the count).

    Quantities seen so far: the question's, the solution text before the step, earlier steps'
    computed and stated results, and the whitelist.
    """
    ungrounded: list[float] = []
    n_operands = 0
    if not steps:
        return 0.0, ungrounded, n_operands
    in_question = _question_keys(question)
    results: set[float] = set()
    first_seen: dict[float, int] | None = None  # quantity -> first offset in the solution
    for s in steps:
        for v in s.operands:
            n_operands += 1
            k = _key(v)
            if k in in_question or k in WHITELIST or k in results:
                continue
            if first_seen is None:  # built only when needed: most operands are found above
                first_seen = {}
                for pos, q in _text_quantities(text):
                    first_seen.setdefault(_key(q), pos)
            if first_seen.get(k, len(text)) < s.start:
                continue
            ungrounded.append(v)
        results.add(_key(s.value))
        results.add(_key(s.stated_value))
    return (len(ungrounded) / n_operands if n_operands else 0.0), ungrounded, n_operands


def inconsistency(question: str, text: str, steps: Sequence[Step], final: FinalAnswer,
                  statements: Sequence[str]) -> tuple[float, dict[str, float]]:
    """5. (max of the parts, the parts): `conflicting` final statements, and `final_vs_last`, the
    answer disagreeing with the last step's result."""
    distinct = {_answer_key(a) for a in statements}
    conflicting = 1.0 if len(distinct) > 1 else 0.0
    final_vs_last = 0.0
    if steps and final.pred_value is not None:
        last = steps[-1]
        p = float(final.pred_value)
        # "30% * 50% = 15%" then "#### 15", or "$0.90" then "how many cents? #### 90"
        scales = (1.0, 100.0) if ("%" in text[last.start : last.end + 1] or "cent" in question) else (1.0,)
        if not any(
            result_matches(r * k, p, final.pred) for r in (last.stated_value, last.value) for k in scales
        ):
            # A conclusion after the last step may still derive the answer in words ("so 50 is
            # cheaper", "3950 - 200 cases leaves 3750"): consistent when the answer is written
            # there, outside the final-answer statements themselves.
            tail = "\n".join(ln for ln in text[last.end :].split("\n") if not _is_final_line(ln))
            key = _key(p)
            if all(_key(v) != key for _, v in _text_quantities(tail)):
                final_vs_last = 1.0
    return max(conflicting, final_vs_last), {"final_vs_last": final_vs_last, "conflicting": conflicting}


def degeneracy(text: str, pred: str | None, cut: bool) -> tuple[float, dict[str, float]]:
    """6. (max of the parts, the parts): no answer, truncated (`cut`: the flag or over
    MAX_SOLUTION_CHARS), repetition and garbage."""
    parts = {
        "no_answer": 1.0 if pred is None else 0.0,
        "truncated": 1.0 if cut else 0.0,
        "repetition": _repetition(text),
        "garbage": _garbage(text),
    }
    return max(parts.values()), parts


def is_degenerate(text: str) -> bool:
    """Degenerate text on its own terms: looping/repetition or garbage at DEGENERATE_AT or more.

    Unlike the `degeneracy` dimension (which also counts a missing answer and truncation, for the
    error profile), this does not look at the token limit or at the answer, so a generation that is
    merely long or unfinished is not called degenerate: evaluation reports truncation and missing
    answers as their own rates.
    """
    return max(_repetition(text), _garbage(text)) >= DEGENERATE_AT


NEAR_WRONGNESS = 0.6  # an incorrect, non-degenerate answer below this wrongness is a near miss


def is_near_miss(correct: bool, profile: dict | None, near_wrongness: float = NEAR_WRONGNESS) -> bool:
    """A wrong but well-formed answer close to right: a profile with wrongness below `near_wrongness`
    and degeneracy below DEGENERATE_AT. The hard negatives of the preference data (rank 2 of 3) and the
    near-miss questions of evaluation use this one rule."""
    p = profile or {}
    return (not correct and bool(p) and p.get("wrongness", 1.0) < near_wrongness
            and p.get("degeneracy", 1.0) < DEGENERATE_AT)


def implausible_magnitude(final: FinalAnswer) -> float:
    """Absurdity only; judged on a mismatching numeric answer: 1 for a negative answer to a positive
    reference, clip(|log10((|p|+1)/(|r|+1))| - 2) (0 up to a factor of 100, 1 from 1000), and at least
    0.5 for a non-integer answer to a positive integer reference."""
    pred_v, ref_v = final.pred_value, final.ref_value
    if final.matched or pred_v is None or ref_v is None:
        return 0.0
    p, r = float(pred_v), float(ref_v)
    if r > 0 and p < 0:
        implausible = 1.0
    else:
        ratio = abs(math.log10((abs(p) + 1.0) / (abs(r) + 1.0)))
        implausible = _clip(ratio - 2.0)
    if r > 0 and ref_v.denominator == 1 and pred_v.denominator != 1:
        implausible = max(implausible, 0.5)
    return implausible


@dataclass(frozen=True)
class Analysis:
    """Everything the profile was computed from, for inspection and debugging."""

    profile: ErrorProfile
    pred: str | None
    extraction: str
    steps: tuple[Step, ...]
    ungrounded: tuple[float, ...]  # operand values that were not grounded
    n_operands: int
    final_statements: tuple[str, ...]  # every "####" / "answer is" / boxed answer, in order
    components: dict[str, float] = field(default_factory=dict)  # sub-scores of dims 5-6, magnitude


class MathVerifier:
    """Scores a solution against its question and reference answer; see the module docstring.

    >>> v = MathVerifier()
    >>> v.profile("Tom has 3 bags of 6 apples. How many apples?", "3 * 6 = 18\\n#### 18", "18").wrongness
    0.0
    """

    def __init__(self, version: str = VERIFIER_VERSION) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"MathVerifier: unknown version {version!r}; supported: {SUPPORTED_VERSIONS}")
        self.version = version

    def __repr__(self) -> str:
        return f"MathVerifier(version={self.version!r})"

    # --- public API -------------------------------------------------------------------------
    def profile(self, question: str, solution: str, reference_answer: str, truncated: bool = False) -> ErrorProfile:
        return self.analyze(question, solution, reference_answer, truncated).profile

    def profile_batch(self, items: Iterable) -> list[ErrorProfile]:
        """Profiles of many solutions. Each item is a dict with ``question``, ``solution``,
        ``reference_answer`` (or ``answer``) and optional ``truncated``, or a tuple
        ``(question, solution, reference_answer[, truncated])``."""
        out = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                try:
                    q, s = item["question"], item["solution"]
                except KeyError as e:
                    raise ValueError(f"profile_batch: item {i}: missing field {e.args[0]!r}") from None
                ref = item.get("reference_answer", item.get("answer"))
                if ref is None:
                    raise ValueError(f"profile_batch: item {i}: missing field 'reference_answer'")
                t = bool(item.get("truncated", False))
            elif isinstance(item, (tuple, list)) and len(item) in (3, 4):
                q, s, ref = item[:3]
                t = bool(item[3]) if len(item) == 4 else False
            else:
                raise ValueError(
                    f"profile_batch: item {i}: expected a dict or a (question, solution, reference_answer"
                    f"[, truncated]) tuple, got {type(item).__name__}"
                )
            out.append(self.analyze(q, s, ref, t).profile)
        return out

    def analyze(self, question: str, solution: str, reference_answer: str, truncated: bool = False) -> Analysis:
        """The profile and what it was computed from: one function per dimension (module docstring)."""
        question = question if isinstance(question, str) else ("" if question is None else str(question))
        solution = solution if isinstance(solution, str) else ("" if solution is None else str(solution))
        reference = reference_answer if isinstance(reference_answer, str) else str(reference_answer)
        overlong = len(solution) > MAX_SOLUTION_CHARS
        text = solution[:MAX_SOLUTION_CHARS]

        final = final_answer(solution, reference)
        steps = find_steps(text)
        statements = final_statements(text)
        ungrounded_share, ungrounded, n_operands = ungrounded_quantity(question, text, steps)
        inconsistent, consistency_parts = inconsistency(question, text, steps, final, statements)
        degenerate, degeneracy_parts = degeneracy(text, final.pred, cut=truncated or overlong)
        implausible = implausible_magnitude(final)

        dims = {
            "answer_mismatch": answer_mismatch(final),
            "numeric_gap": numeric_gap(final),
            "arithmetic_error": arithmetic_error(steps),
            "ungrounded_quantity": ungrounded_share,
            "inconsistency": inconsistent,
            "degeneracy": degenerate,
        }
        wrongness = sum(w * dims[k] for k, w in WRONGNESS_WEIGHTS.items())
        extra = dict(dims, implausible_magnitude=implausible)
        absurdity = sum(w * extra[k] for k, w in ABSURDITY_WEIGHTS.items())
        prof = ErrorProfile(**dims, wrongness=_clip(round(wrongness, 12)), absurdity=_clip(round(absurdity, 12)))
        return Analysis(
            profile=prof,
            pred=final.pred,
            extraction=final.extraction,
            steps=tuple(steps),
            ungrounded=tuple(ungrounded),
            n_operands=n_operands,
            final_statements=tuple(statements),
            components={**consistency_parts, **degeneracy_parts, "implausible_magnitude": implausible},
        )
