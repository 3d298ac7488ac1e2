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

Powers are read as powers, never as their digits run together: ``2**3``, ``2^3``, ``2^{10}``,
``(-2)^3``, ``10**-2`` (right-associative, binding tighter than a sign, as in Python and on paper)
are exact numbers when the result has at most ``_MAX_POWER_DIGITS`` digits; a bigger one
(``10**10**10``) is refused: not a number, and never handed to math-verify, whose sympy would
try to evaluate it. ``**`` is markdown bold where it does not sit between two operands
(``**12**`` -> ``12``).

Equivalence (:func:`answers_match`) first compares exact rationals (``72 == 72.0 == 72.00``,
``1,000 == 1000``, ``3/4 == 0.75 == \\frac{3}{4}``); two plain numbers are decided there and then.
Only when one side is not a plain number does it fall back to math-verify, guarded so it never
raises, with a length cap (sympy can take seconds on long garbage) and a signal-based timeout only
where signals work (the main thread); elsewhere the timeout-free path is taken.
"""

from __future__ import annotations

import math
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
    "grade_answer",
]

EXTRACTION_KINDS = ("hashes", "answer_is", "boxed", "last_number", "none")

# A number as people write it: optional sign (ASCII or unicode minus), either properly grouped
# thousands ("1,234,567") or plain digits, optional decimals; or a bare ".5".
_NUM = r"[-−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# "last number" must not treat the "-" in "5-3" as a sign: a sign only counts at the start or
# after a non-word, non-digit character.
# An exponent written after it ("3^4", "2**10", "2^{10}") belongs to the number: the last number of
# "there are 3^4 ways" is 3^4, not 4. A spaced "**" must be spaced on both sides ("2 ** 3"), so a
# markdown bold closer followed by a number ("**1** 5") is not read as a power.
_POWER_SUFFIX = r"(?:(?:\*\*|\s+\*\*\s+|\s*\^\s*)(?:\{\s*[-−]?\d+\s*\}|[-−]?\d+))*"
_LAST_NUM_RE = re.compile(r"(?:(?<![\w.)])[-−])?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                          + _POWER_SUFFIX)
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

# Largest power computed exactly, in digits of its numerator or denominator. 10**400 (401 digits) is
# a number; 10**10**10 is refused before any arithmetic.
_MAX_POWER_DIGITS = 1000
# Longest number text read exactly; longer "numbers" are not numbers. Long enough that the canonical
# text of any power read above re-reads (2**-3000 has 3,000 decimals), short enough that no digit
# run reaches Python's 4,300-digit int() limit.
_MAX_NUMBER_CHARS = 4 * _MAX_POWER_DIGITS
_MAX_POWER_CHARS = 100
_MAX_BOXED_CHARS = 1000
# math-verify (sympy) can take seconds on long or adversarial strings: only short ones go there.
_MAX_MATH_VERIFY_CHARS = 200
# Before math-verify: the sum of all integer literals in exponents (sympy evaluates 10^{9999}
# eagerly; 10^{10^{10}} would take hours), and the LaTeX commands an exponent may hold.
_MAX_EXPONENT_TOTAL = 10_000
_EXPONENT_COMMANDS = frozenset({"frac", "dfrac", "tfrac", "sqrt", "pi", "theta", "alpha", "beta", "gamma",
                                "left", "right"})


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
    s = _strip_bold(s.replace("\\$", "").replace("$", ""))
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = _TEXT_RE.sub("", s)
    s = _LATEX_SPACE_RE.sub("", s)
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\left", "").replace("\\right", "")
    s = s.strip().lstrip("€£¥").strip()
    if s.upper().startswith("USD"):
        s = s[3:].strip()
    return s.rstrip(".,;!: \t")  # "72." -> "72"


def _is_power_stars(s: str, start: int, end: int) -> bool:
    """Whether the "**" at s[start:end] is a power: operands on both sides, either touching it
    ("2**3", "x**2") or both spaced off ("2 ** 3"). A bold marker has text on one side only, or
    a space on one side only ("is **18** apples")."""
    left, right = s[start - 1 : start], s[end : end + 1]
    if left == " " and right == " ":
        left, right = s[:start].rstrip()[-1:], s[end:].lstrip()[:1]
    return bool(left and right) and (left.isalnum() or left in ")}") and (right.isalnum() or right in "({-−+\\")


def _strip_bold(s: str) -> str:
    """Drop markdown bold ("**12**" -> "12") but keep "**" used as a power ("2**3")."""
    if "**" not in s:
        return s
    return re.sub(r"\*\*", lambda m: m.group(0) if _is_power_stars(s, m.start(), m.end()) else "", s)


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


def grade_answer(text: str | None, reference: str | None, truncated: bool = False) -> tuple[str | None, bool]:
    """(extracted answer, correct) of a generation against the reference answer.

    A truncated generation (cut at max_new_tokens, no end-of-turn token) did not finish: it is graded
    correct only through an explicit final-answer statement ("####", "The answer is", \\boxed{}),
    never through the last-number fallback, which would grade whatever number the text stopped on.
    """
    pred, kind = extract_answer_with_kind(text)
    if truncated and kind == "last_number":
        return pred, False
    return pred, answers_match(pred, reference)


def parse_number(s: str | None) -> Fraction | None:
    """Exact value of a plain number: "1,000", "$72.00", "3/4", "\\frac{3}{4}", "-5", "50%" (-> 50).

    Powers are read as powers ("2**3", "2^{10}" -> 8, 1024) up to _MAX_POWER_DIGITS digits.
    Returns None for anything else (expressions, text, bigger powers, numbers longer than
    _MAX_NUMBER_CHARS characters).
    """
    if s is None:
        return None
    if _INT_RE.fullmatch(s):  # fast path: a bare integer
        return Fraction(int(s))
    s = _strip_wrapping(s)
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    if "^" in s or "**" in s:
        # Short texts only: the parser recurses into brackets, and no power needs more.
        return _PowerParser(s).parse() if len(s) <= _MAX_POWER_CHARS else None
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


class _NotANumber(Exception):
    pass


class _PowerParser:
    """Exact value of a plain number with powers: ``unary := sign? power``, ``power := atom
    (("**" | "^") unary)?`` (right-associative), ``atom := digits | "(" number ")" | "{" number "}"``,
    where a bracketed number is anything :func:`parse_number` reads. None for anything else."""

    _DIGITS_RE = re.compile(r"\d+(?:\.\d+)?|\.\d+")

    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def parse(self) -> Fraction | None:
        try:
            value = self.unary()
            self.skip()
            return value if self.i == len(self.s) else None
        except (_NotANumber, ZeroDivisionError, OverflowError, ValueError):
            return None

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def unary(self) -> Fraction:
        self.skip()
        if self.i < len(self.s) and self.s[self.i] in "-−+":
            negative = self.s[self.i] != "+"
            self.i += 1
            value = self.power()
            return -value if negative else value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        self.skip()
        if self.s.startswith("**", self.i) or self.s.startswith("^", self.i):
            self.i += 2 if self.s[self.i] == "*" else 1
            return _exact_power(base, self.unary())
        return base

    def atom(self) -> Fraction:
        self.skip()
        s, i = self.s, self.i
        if i < len(s) and s[i] in "({":
            close, depth = {"(": ")", "{": "}"}[s[i]], 0
            for j in range(i, len(s)):
                depth += (s[j] == s[i]) - (s[j] == close)
                if depth == 0:
                    inner = parse_number(s[i + 1 : j])
                    if inner is None:
                        raise _NotANumber
                    self.i = j + 1
                    return inner
            raise _NotANumber  # unbalanced
        m = self._DIGITS_RE.match(s, i)
        if not m:
            raise _NotANumber
        self.i = m.end()
        return Fraction(m.group(0))


def _exact_power(base: Fraction, exp: Fraction) -> Fraction:
    """base ** exp for an integer exponent whose result has at most _MAX_POWER_DIGITS digits;
    the size is checked from logarithms first, so a huge power costs nothing to refuse."""
    if exp.denominator != 1:
        raise _NotANumber  # 4^0.5: not exact in general
    e = abs(exp.numerator)
    size = max(abs(base.numerator), base.denominator)
    if size > 1 and e * math.log10(size) >= _MAX_POWER_DIGITS:  # >= that: more than that many digits
        raise _NotANumber
    return base ** exp.numerator  # ZeroDivisionError for 0 ** -1


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


_POWER_OP_RE = re.compile(r"\*\*|\^")
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")


def _group(s: str, i: int, step: int) -> tuple[int, int]:
    """Span of the bracketed group starting at s[i] (step 1: "(" or "{" forwards; step -1: ")" or
    "}" backwards), or of the token there when s[i] is no bracket."""
    pairs = {"(": ")", "{": "}", ")": "(", "}": "{"}
    if 0 <= i < len(s) and s[i] in pairs and (s[i] in "({") == (step == 1):
        depth, j = 0, i
        while 0 <= j < len(s):
            depth += (s[j] == s[i]) - (s[j] == pairs[s[i]])
            if depth == 0:
                return (i, j + 1) if step == 1 else (j, i + 1)
            j += step
        return (i, len(s)) if step == 1 else (0, i + 1)
    j = i
    if step == 1 and j < len(s) and s[j] in "-−+":
        j += 1
    while 0 <= j < len(s) and (s[j].isalnum() or s[j] in ".\\"):
        j += step
    return (i, j) if step == 1 else (j + 1, i + 1)


def _powers_too_big(s: str) -> bool:
    """Whether an answer holds a power that sympy could not evaluate quickly: a power of a power
    (10^10^10, 10^{10^{10}}, (10^{999})^{999}), an exponent that multiplies or uses LaTeX beyond
    fractions and a few letters, or integer exponents adding up to more than _MAX_EXPONENT_TOTAL."""
    total = 0
    for m in _POWER_OP_RE.finditer(s):
        left = m.start() - 1
        while left >= 0 and s[left] == " ":
            left -= 1
        right = m.end()
        while right < len(s) and s[right] == " ":
            right += 1
        base = s[slice(*_group(s, left, -1))]
        exp_start, exp_end = _group(s, right, 1)
        exp = s[exp_start:exp_end]
        tower = _POWER_OP_RE.match(s[exp_end:].lstrip())  # 10^10^10 = 10^(10^10)
        if tower or _POWER_OP_RE.search(base) or _POWER_OP_RE.search(exp) or re.search(r"[*!]", exp):
            return True
        if any(c not in _EXPONENT_COMMANDS for c in _COMMAND_RE.findall(exp)):
            return True
        total += sum(int(d) if len(d) <= 6 else _MAX_EXPONENT_TOTAL + 1 for d in re.findall(r"\d+", exp))
        if total > _MAX_EXPONENT_TOTAL:
            return True
    return False


def _math_verify_match(pred: str, reference: str) -> bool:
    if len(pred) > _MAX_MATH_VERIFY_CHARS or len(reference) > _MAX_MATH_VERIFY_CHARS:
        return False
    if _powers_too_big(pred) or _powers_too_big(reference):
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
