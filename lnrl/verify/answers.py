"""Final-answer extraction and equivalence for math solutions.

Extraction tries, in order (the first rule that finds something wins):

1. ``hashes``     GSM8K / gsm_symbolic: the last ``#### X`` line.
2. ``answer_is``  MetaMathQA: the last "The answer is: X" / "The answer is X".
3. ``boxed``      the last ``\\boxed{...}`` (balanced braces, so ``\\boxed{\\frac{3}{4}}`` works).
4. ``last_number`` the last number anywhere in the text.

The extracted text is cleaned: surrounding ``$``, currency signs, thousands commas, a trailing
period, ``%`` and unit words after a number are dropped ("$1,000.50 dollars." -> "1000.50").
Anything that is not a plain number (``\\frac{3}{4}``, ``2x+1``) is returned as written, minus
the wrapping, for math-verify to judge.

Equivalence (:func:`answers_match`) first compares exact rationals (``72 == 72.0 == 72.00``,
``1,000 == 1000``, ``3/4 == 0.75 == \\frac{3}{4}``); two plain numbers are decided there and then.
Only when one side is not a plain number does it fall back to math-verify, guarded so it never
raises, with a length cap (sympy can take seconds on long garbage) and a signal-based timeout only
where signals work (the main thread); elsewhere the timeout-free path is taken.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

__all__ = [
    "extract_answer",
    "extract_answer_with_kind",
    "answers_match",
    "normalize_number",
    "parse_number",
    "numbers_match",
    "EXTRACTION_KINDS",
]

EXTRACTION_KINDS = ("hashes", "answer_is", "boxed", "last_number", "none")

# A number as people write it: optional sign (ASCII or unicode minus), either properly grouped
# thousands ("1,234,567") or plain digits, optional decimals; or a bare ".5".
_NUM = r"[-−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# "last number" must not treat the "-" in "5-3" as a sign: a sign only counts at the start or
# after a non-word, non-digit character.
_LAST_NUM_RE = re.compile(r"(?:(?<![\w.)])[-−])?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"[Tt]he (?:final )?answer is[ \t]*:?[ \t]*([^\n]*)")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A cleaned answer that is one number, possibly followed by a percent sign or by unit words
# ("18 dollars", "5 apples per day"). Units must be whole words after a space, so "2x" and "5 x"
# stay expressions.
_NUM_WITH_UNITS_RE = re.compile(r"(" + _NUM + r")(?:\s*%|\s+[A-Za-z]{2,}[A-Za-z .'/-]*)?")
_WORDS_RE = re.compile(r"[A-Za-z]{3,}")
_INT_RE = re.compile(r"-?\d{1,30}")
_FRACTION_RE = re.compile(r"([-−]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_LATEX_FRAC_RE = re.compile(r"([-−]?)\\[dt]?frac\s*\{\s*([-−]?[\d.]+)\s*\}\s*\{\s*([\d.]+)\s*\}")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}")
_LATEX_SPACE_RE = re.compile(r"\\[,;:! ]|\\q?quad")

# Longest digit string we convert exactly; longer "numbers" are treated as not-a-number (Python
# refuses int() of > 4300 digits, and nothing a model should answer needs more than this).
_MAX_NUMBER_CHARS = 64
_MAX_BOXED_CHARS = 1000
# math-verify (sympy) can take seconds on long or adversarial strings: only short ones go there.
_MAX_MATH_VERIFY_CHARS = 200


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    matches = list(_BOXED_RE.finditer(text))
    # Bounded work on hostile input ("\\boxed{" x 1000): the last few boxes, each at most
    # _MAX_BOXED_CHARS long; a longer "answer" is no answer.
    for m in reversed(matches[-8:]):
        depth, i = 1, m.end()
        stop = min(len(text), m.end() + _MAX_BOXED_CHARS)
        while i < stop:
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i]
            i += 1
    return None  # unbalanced (e.g. truncated mid-box)


def _strip_wrapping(s: str) -> str:
    """Remove math delimiters, bold, currency and a trailing period; keep the content."""
    s = s.strip()
    boxed = _last_boxed(s)
    if boxed is not None:
        s = boxed.strip()
    s = s.replace("\\$", "").replace("$", "").replace("**", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = _TEXT_RE.sub("", s)
    s = _LATEX_SPACE_RE.sub("", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    s = s.strip().lstrip("€£¥").strip()
    if s.upper().startswith("USD"):
        s = s[3:].strip()
    return s.rstrip(".,;!: \t")  # "72." -> "72"


def _clean(raw: str) -> str | None:
    """Cleaned answer text: a plain number without commas/units, or the expression as written."""
    s = _strip_wrapping(raw)
    if not s:
        return None
    m = _NUM_WITH_UNITS_RE.fullmatch(s)
    if m:
        return m.group(1).replace(",", "").replace("−", "-")
    if _FRACTION_RE.fullmatch(s):
        return s.replace(" ", "").replace("−", "-")
    if "\\" not in s and len(_WORDS_RE.findall(s)) >= 2:
        # a sentence, not an expression ("#### The total is 72 apples"): its last number
        numbers = _LAST_NUM_RE.findall(s)
        if numbers:
            return numbers[-1].replace(",", "").replace("−", "-")
    return s


def extract_answer_with_kind(text: str | None) -> tuple[str | None, str]:
    """(final answer, which rule fired). The rule is one of :data:`EXTRACTION_KINDS`."""
    if not text:
        return None, "none"
    matches = _HASHES_RE.findall(text)
    for raw in reversed(matches):
        ans = _clean(raw)
        if ans is not None:
            return ans, "hashes"
    matches = _ANSWER_IS_RE.findall(text)
    for raw in reversed(matches):
        ans = _clean(raw)
        if ans is not None:
            return ans, "answer_is"
    boxed = _last_boxed(text)
    if boxed is not None:
        ans = _clean(boxed)
        if ans is not None:
            return ans, "boxed"
    numbers = _LAST_NUM_RE.findall(text)
    if numbers:
        return numbers[-1].replace(",", "").replace("−", "-"), "last_number"
    return None, "none"


def extract_answer(text: str | None) -> str | None:
    """The final answer of a solution (see module docstring for the rules), or None."""
    return extract_answer_with_kind(text)[0]


def parse_number(s: str | None) -> Fraction | None:
    """Exact value of a plain number: "1,000", "$72.00", "3/4", "\\frac{3}{4}", "-5", "50%" (-> 50).

    Returns None for anything else (expressions, text, numbers longer than 64 characters).
    """
    if s is None:
        return None
    if _INT_RE.fullmatch(s):  # fast path: a bare integer
        return Fraction(int(s))
    s = _strip_wrapping(s)
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    m = _LATEX_FRAC_RE.fullmatch(s)
    if m:
        try:
            value = Fraction(m.group(2).replace("−", "-")) / Fraction(m.group(3))
        except (ValueError, ZeroDivisionError):
            return None
        return -value if m.group(1) else value
    m = _FRACTION_RE.fullmatch(s)
    if m:
        try:
            return Fraction(m.group(1).replace("−", "-")) / Fraction(m.group(2))
        except (ValueError, ZeroDivisionError):
            return None
    m = _NUM_WITH_UNITS_RE.fullmatch(s)
    if m:
        return Fraction(m.group(1).replace(",", "").replace("−", "-"))
    return None


def _format_fraction(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:  # non-terminating decimal: keep it exact
        return f"{v.numerator}/{v.denominator}"
    # Terminating: at most max(exponent of 2, exponent of 5) decimals; format exactly, trim zeros.
    n_dec = 0
    dd = v.denominator
    while dd != 1:
        dd //= 10 if dd % 10 == 0 else (2 if dd % 2 == 0 else 5)
        n_dec += 1
    scaled = v * 10**n_dec
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled.numerator)).rjust(n_dec + 1, "0")
    out = f"{sign}{digits[:-n_dec]}.{digits[-n_dec:]}".rstrip("0").rstrip(".")
    return out


def normalize_number(s: str | None) -> str | None:
    """Canonical text of a plain number ("72.00" -> "72", "1,000" -> "1000", "3/4" -> "0.75",
    "1/3" -> "1/3"), or None when ``s`` is not a plain number."""
    v = parse_number(s)
    return None if v is None else _format_fraction(v)


def _math_verify_match(pred: str, reference: str) -> bool:
    if len(pred) > _MAX_MATH_VERIFY_CHARS or len(reference) > _MAX_MATH_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify

        # math-verify's timeouts use SIGALRM, which only the main thread may install.
        main = threading.current_thread() is threading.main_thread()
        t = 5 if main else None

        def _parse(s: str):
            # An extracted answer is one expression: as bare text math-verify would pick the first
            # number out of "1+x", so read it as inline math first.
            out = parse(s if "$" in s else f"${s}$", parsing_timeout=t)
            return out or parse(s, parsing_timeout=t)

        gold, target = _parse(reference), _parse(pred)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=t))
    except BaseException as e:  # noqa: BLE001 - sympy raises anything, incl. RecursionError
        if isinstance(e, KeyboardInterrupt):
            raise
        return False


def numbers_match(a: Fraction, b: Fraction) -> bool:
    """Exact rational equality, with a 1e-9 relative slack for decimal round-off."""
    return a == b or abs(a - b) <= Fraction(1, 10**9) * max(abs(a), abs(b))


def answers_match(pred: str | None, reference: str | None) -> bool:
    """True when ``pred`` is equivalent to ``reference``. Never raises.

    Plain numbers are compared exactly as rationals (with a 1e-9 relative slack for decimal
    round-off); anything else goes to math-verify.
    """
    if pred is None or reference is None:
        return False
    pred, reference = str(pred), str(reference)
    a, b = parse_number(pred), parse_number(reference)
    if a is not None and b is not None:
        return numbers_match(a, b)
    if _strip_wrapping(pred) == _strip_wrapping(reference) and _strip_wrapping(pred):
        return True
    return _math_verify_match(pred, reference)
