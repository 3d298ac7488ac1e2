"""A safe arithmetic evaluator and the finder of checkable steps in a solution.

Nothing here calls ``eval`` or touches Python's AST: expressions are tokenized by hand and
evaluated by a small recursive-descent parser over floats. Grammar (usual precedence)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | power
    power   := postfix ("^" unary)?          # right-associative, binds tighter than unary minus
    postfix := atom "%"*                     # "20%" is 0.2
    atom    := NUMBER | "(" expr ")"

Accepted spellings: ``*  ×  x  X  ·  ⋅`` multiply, ``/  ÷`` divide, ``-  −  –`` minus,
``^  **`` power, ``%`` percent (postfix), implicit multiplication before a parenthesis written
without a space (``2(14)``), thousands separators ("1,000"), decimals (".5", "0.25"),
currency signs ``$ € £`` (ignored). There is no unary plus, so "2x+1" is not read as 2*(+1).

Limits (so hostile input costs microseconds, never hangs or overflows): expressions over
:data:`MAX_EXPR_CHARS` characters or :data:`MAX_TOKENS` tokens, numbers over 30 characters,
nesting deeper than :data:`MAX_DEPTH`, exponents above :data:`MAX_EXPONENT` in magnitude and
non-finite results all give ``None``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Step", "evaluate", "find_steps", "result_matches", "MAX_EXPR_CHARS", "MAX_TOKENS"]

MAX_EXPR_CHARS = 300
MAX_TOKENS = 120
MAX_DEPTH = 32
MAX_EXPONENT = 64
MAX_NUMBER_CHARS = 30
# find_steps looks at most at this much text: a GSM8K solution is < 2,000 characters, and
# anything past this is degenerate (the profile's degeneracy dimension says so).
MAX_SEARCH_CHARS = 50_000
MAX_STEPS = 400

# "1,000", "18 000" (space-grouped thousands, not before a digit, "/" or ","), "12", "12.", ".5"
_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?: \d{3})+(?![\d/,.])|\d+(?:\.\d*)?|\.\d+")
_OPS = {
    "+": "+", "-": "-", "−": "-", "–": "-",
    "*": "*", "×": "*", "x": "*", "X": "*", "·": "*", "⋅": "*",
    "/": "/", "÷": "/", "^": "^", "%": "%", "(": "(", ")": ")", ",": ",",
}  # fmt: skip
_SKIP = frozenset(" \t$€£")
# Characters an inline expression (and its "= result" chain) may be made of.
_ARITH_CHARS = frozenset("0123456789.") | frozenset(_OPS) | _SKIP
# Unit words between a number and an operator or "=" ("2000 cases + 500 cases = 2500 cases",
# "$600/weekday * 5 weekdays", "4 hours/day * 125 watts/hour=500"): blanked out (same length,
# so offsets hold) before looking for inline chains. One to four words of two letters or more
# (a single letter is a variable: "5A", "3x-5", "we get X = 1200"; "a" may follow a word: "in a
# day"), "/" allowed between.
_UNITS_RE = re.compile(
    r"(?<=[\d%])[ \t]*/?[A-Za-z][A-Za-z'’-]+(?:[ \t/]+(?:[A-Za-z][A-Za-z'’-]+|a)){0,3}"
    r"(?=[ \t]*(?:[-+*/×÷·=−–]|[xX][ \t]*[$\d(.]))"
)
_SIMPLE_BINARY_RE = re.compile(r"[ \t]*(\d+(?:\.\d+)?|\.\d+)[ \t]*([-+*/])[ \t]*(\d+(?:\.\d+)?|\.\d+)[ \t]*")
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_RESTATEMENT_CHARS = "".join(sorted(_ARITH_CHARS)) + "="
_TIGHT_FRACTION_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?![\d.])")
_ANNOTATION_RE = re.compile(r"<<([^<>\n]{1,300}?)>>")
_ECHO_RE = re.compile(r"[ \t]*[$€£]?[ \t]*(-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))")


class _Num:
    """A number token: its value and the text it was written as."""

    __slots__ = ("value", "text")

    def __init__(self, value: float, text: str) -> None:
        self.value, self.text = value, text


def _is_times_x(s: str, i: int) -> bool:
    """Whether the letter x at s[i] is a multiplication sign: between a number (or ")", "%")
    and a number (or "(", "$"), as in "3 x 4" and "3x(2+1)"; not in "3x-5" or "2x = 18"."""
    j = i - 1
    while j >= 0 and s[j] in " \t":
        j -= 1
    if j < 0 or not (s[j].isdigit() or s[j] in ")%"):
        return False
    k = i + 1
    while k < len(s) and s[k] in " \t":
        k += 1
    return k < len(s) and (s[k].isdigit() or s[k] in "($€£.")


# A token is a _Num or an operator string ("+", "-", "*", "/", "^", "%", "(", ")", ","). A "-"
# written directly before a digit becomes "-d", so a leading dash followed by a space ("- 3 * 4",
# a bullet) can be told from a negative number ("-3 * 4").
def _tokenize(s: str, positions: list[int] | None = None, partial: bool = False) -> list | None:
    """Tokens of s, or None on a character outside the grammar (with ``partial``, the tokens
    before it). Fills ``positions`` with each token's offset when given."""
    if len(s) > MAX_EXPR_CHARS:
        return None
    toks: list = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in _SKIP:
            i += 1
            continue
        if len(toks) >= MAX_TOKENS:
            return toks if partial else None
        if ch.isdigit() or (ch == "." and i + 1 < n and s[i + 1].isdigit()):
            m = _NUMBER_RE.match(s, i)
            text = m.group(0)
            if len(text) > MAX_NUMBER_CHARS:
                return toks if partial else None
            tok, nxt = _Num(float(text.replace(",", "").replace(" ", "")), text), m.end()
        elif ch == "*" and i + 1 < n and s[i + 1] == "*":
            tok, nxt = "^", i + 2
        else:
            op = _OPS.get(ch)
            if op is None or (ch in "xX" and not _is_times_x(s, i)):
                return toks if partial else None
            if op == "-" and i + 1 < n and (s[i + 1].isdigit() or s[i + 1] == "."):
                op = "-d"
            if op == "(" and i > 0 and (s[i - 1].isdigit() or s[i - 1] == ")"):
                # implicit multiplication written without a space: "2(14)", "(1+2)(3)"
                if positions is not None:
                    positions.append(i)
                toks.append("*")
            tok, nxt = op, i + 1
        if positions is not None:
            positions.append(i)
        toks.append(tok)
        i = nxt
    return toks


class _Parser:
    __slots__ = ("toks", "pos", "depth", "operands", "n_binary")

    def __init__(self, toks: list) -> None:
        self.toks, self.pos, self.depth = toks, 0, 0
        self.operands: list[_Num] = []
        self.n_binary = 0

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def expr(self) -> float:
        v = self.term()
        while (t := self.peek()) in ("+", "-", "-d"):
            self.pos += 1
            self.n_binary += 1
            r = self.term()
            v = v + r if t == "+" else v - r
        return v

    def term(self) -> float:
        v = self.unary()
        while (t := self.peek()) in ("*", "/"):
            self.pos += 1
            self.n_binary += 1
            r = self.unary()
            if t == "*":
                v = v * r
            else:
                if r == 0:
                    raise ValueError("division by zero")
                v = v / r
        return v

    def unary(self) -> float:
        if self.peek() in ("-", "-d"):
            self.pos += 1
            return -self.unary()
        return self.power()

    def power(self) -> float:
        base = self.postfix()
        if self.peek() == "^":
            self.pos += 1
            self.n_binary += 1
            exp = self.unary()
            if abs(exp) > MAX_EXPONENT or (base == 0 and exp < 0):
                raise ValueError("exponent out of range")
            if base < 0 and exp != int(exp):
                raise ValueError("complex result")
            return math.pow(base, exp)
        return base

    def postfix(self) -> float:
        v = self.atom()
        while self.peek() == "%":
            self.pos += 1
            v = v / 100.0
        return v

    def atom(self) -> float:
        t = self.peek()
        if isinstance(t, _Num):
            self.pos += 1
            self.operands.append(t)
            return t.value
        if t == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ValueError("nesting too deep")
            self.pos += 1
            v = self.expr()
            if self.peek() != ")":
                raise ValueError("unbalanced parenthesis")
            self.pos += 1
            self.depth -= 1
            return v
        raise ValueError(f"unexpected token {t!r}")


def _parse(toks: list) -> tuple[float, _Parser] | None:
    """Value of a whole token list, or None if it is not one well-formed, finite expression."""
    if not toks:
        return None
    p = _Parser(toks)
    try:
        v = p.expr()
    except (ValueError, OverflowError, ZeroDivisionError, RecursionError):
        return None
    if p.pos != len(toks) or not math.isfinite(v):
        return None
    return v, p


def evaluate(expr: str) -> float | None:
    """Value of an arithmetic expression, or None when it is not one (never evaluates code)."""
    if not isinstance(expr, str):
        return None
    toks = _tokenize(expr)
    if toks is None:
        return None
    out = _parse(toks)
    return None if out is None else out[0]


@dataclass(frozen=True)
class Step:
    """One checkable computation ``expr = stated`` found in a solution.

    ``value`` is what ``expr`` evaluates to; ``ok`` says whether ``stated`` agrees with it (see
    :func:`result_matches`). ``operands`` are the numbers written in ``expr`` (as written, before
    any ``%``), ``start`` the character offset where the computation begins in the solution (so
    "earlier in the solution" means ``solution[:start]``) and ``end`` where its result ends. For a
    GSM8K calculator annotation ``<<48/2=24>>24`` the number written right after ``>>`` must
    agree too (``echo``).
    """

    kind: str  # "annotation" | "inline"
    expr: str
    stated: str
    value: float
    stated_value: float
    ok: bool
    start: int
    end: int
    operands: tuple[float, ...]
    echo: str | None = None


def _decimals(text: str) -> int:
    i = text.find(".")
    if i < 0:
        return 0
    return sum(1 for c in text[i + 1 :] if c.isdigit())


def result_matches(value: float, stated_value: float, stated_text: str = "") -> bool:
    """Whether a stated result agrees with the computed value.

    Agree when equal to a relative 1e-6, or when the stated result is the value rounded or
    truncated to the decimals it is written with (``10/3 = 3.33``, ``2/3 = 0.67``, ``2/3 = 0.66``:
    within one unit of its last decimal). A stated *integer* for a non-integer value is only
    accepted as the floor or ceiling of a value at least 10 in magnitude (GSM8K rounds counts:
    ``<<100/3=33>>``), so "7/2 = 3" is an error but "1000/7 = 142" is not.
    """
    diff = abs(value - stated_value)
    if diff <= 1e-6 * max(1.0, abs(value), abs(stated_value)):
        return True
    d = _decimals(stated_text)
    if d >= 1:
        return diff < 10.0**-d * (1 + 1e-9)
    return abs(value) >= 10 and diff < 1.0 and stated_value in (math.floor(value), math.ceil(value))


def _tok_end(text: str, pos: int, tok) -> int:
    if isinstance(tok, _Num):
        return pos + len(tok.text)
    return pos + (2 if tok == "^" and text.startswith("**", pos) else 1)


_BINARY_CHARS = frozenset("+*/^×÷·⋅%")
_MAX_ATTEMPTS = 16
_MIXED_FRACTION_RE = re.compile(r"\d+\s*/\s*\d")
_DASHES = frozenset("-−–")


def _suffix_expr(text: str, before: str) -> tuple[int, float, _Parser] | None:
    """The longest well-formed expression ending text: (its offset in text, value, parser).

    ``before`` is the line up to ``text``. Candidates start at a number, "(" or an attached
    minus ("-3"), so a word read as tokens ("x" of "box"), a list comma or a dash used as
    punctuation can be dropped; but an expression that continues leftwards into something we
    cannot evaluate is not a step: after an operator ("X + 10", "2 pounds * 1/3"), a digit
    ("1 1/2", mixed numbers), ")" or a letter glued to it ("2(50+100)", "A5").
    """
    positions: list[int] = []
    toks = _tokenize(text, positions)
    if not toks:
        return None
    tried = 0
    for i, t in enumerate(toks):
        if not (isinstance(t, _Num) or t == "(" or t == "-d"):
            continue
        tried += 1
        if tried > _MAX_ATTEMPTS:  # bounded work: each attempt is a parse
            return None
        out = _parse(toks[i:])
        if out is None:
            continue
        full = before + text[: positions[i]]
        j = len(full)
        while j > 0 and full[j - 1] in " \t$€£":
            j -= 1
        c = full[j - 1] if j > 0 else ""
        if c.isdigit() and _MIXED_FRACTION_RE.match(text, positions[i]):
            return None  # a mixed number: "1 1/2 + 2"
        if c and (c in _BINARY_CHARS or c == ")" or (c in ":" and j == len(full)) or (c.isdigit() and j == len(full))):
            return None  # continues leftwards: "X + 10", "2(50+100)", "6:00+48"
        if c in _DASHES and full[: j - 1].strip():
            return None  # "X-10", "a day - 4 hours": continues leftwards; a leading "- " is a bullet
        if c.isalpha() and j == len(full):
            return None  # glued to a letter: "A5"
        return positions[i], out[0], out[1]
    return None


def _prefix_expr(text: str, after: str, whole: bool) -> tuple[float, _Parser, str, int] | None:
    """The longest well-formed expression starting text: (value, parser, what follows it, where
    it ends in text).

    ``after`` is the rest of the line after ``text``. With ``whole``, the expression must be all
    of ``text`` (a segment between two "="). Not a result: an expression that goes on into
    something we cannot evaluate ("30 + M", "24/Y", "5A": algebra) or a number followed by
    another ("3 1/2": a mixed number).
    """
    positions: list[int] = []
    toks = _tokenize(text, positions, partial=not whole)
    if not toks:
        return None
    # the whole text, then shorter and shorter (bounded), and last the first token alone
    lengths = list(range(len(toks), max(1, len(toks) - _MAX_ATTEMPTS), -1)) + [1]
    for j in dict.fromkeys(lengths):
        out = _parse(toks[:j])
        if out is None:
            if whole:
                return None
            continue
        end = _tok_end(text, positions[j - 1], toks[j - 1])
        rest = (text[end:] + after).lstrip(" \t$€£")
        nxt = rest[:1]
        if nxt.isalpha() and not (text + after)[end : end + 1].isspace():
            return None  # glued to a letter: "5A", "1.2Y"
        if nxt == ":" and rest[1:2].isdigit():
            return None  # a time of day, "6:48"
        if nxt.isdigit() and _MIXED_FRACTION_RE.match(rest):
            return None  # a mixed number: "= 3 1/2"
        if nxt and nxt in "(+*/^×÷·-−–" and not (nxt in _DASHES and rest[1:2] == " "):
            return None  # continues: "30 + M", "24/Y" (a trailing " - " dash is punctuation)
        full = text + after
        if nxt and nxt in "xX" and _is_times_x(full, len(full) - len(rest)):
            return None
        return out[0], out[1], rest, end
    return None


def _scan_left(line: str, end: int, limit: int = MAX_EXPR_CHARS) -> int:
    i = end
    stop = max(0, end - limit)
    while i > stop and line[i - 1] in _ARITH_CHARS:
        if line[i - 1] == "." and not line[i : i + 1].isdigit():
            break
        i -= 1
    return i


def _scan_right(line: str, begin: int, limit: int = MAX_EXPR_CHARS) -> int:
    i = begin
    stop = min(len(line), begin + limit)
    while i < stop and line[i] in _ARITH_CHARS:
        if line[i] == "." and not line[i + 1 : i + 2].isdigit():
            break
        i += 1
    return i


def _stated_text(p: _Parser, fallback: str) -> str:
    """Text of a stated result: the number as written when it is a single number."""
    if len(p.operands) == 1 and p.n_binary == 0:
        return p.operands[0].text
    return fallback.strip()


def _inline_steps(line: str, offset: int, out: list[Step], original: str) -> None:
    """Steps from ``a op b = c`` chains in one line (no calculator annotations in it); ``line``
    has unit words blanked, ``original`` is the line as written (for the step's text)."""
    n = len(line)
    pos = line.find("=")
    while pos >= 0 and len(out) < MAX_STEPS:
        # A chain: "=" signs separated only by arithmetic characters.
        eqs = [pos]
        while True:
            nxt = _scan_right(line, eqs[-1] + 1)
            if nxt < n and line[nxt] == "=" and nxt > eqs[-1] + 1 and len(eqs) < MAX_STEPS:
                eqs.append(nxt)
            else:
                break
        last_end = _scan_right(line, eqs[-1] + 1)
        # The first segment is the longest expression ending at the first "="; the others are
        # the longest expressions starting after each "=" (a sentence goes on after a result).
        left_start = _scan_left(line, eqs[0])
        segs = [line[a + 1 : b] for a, b in zip(eqs, eqs[1:] + [last_end])]
        # Each segment is read twice: as the result of the "=" before it (rhs[k]) and as the
        # expression of the "=" after it (lhs[k]): the same whole expression in "a = b = c", or a
        # result and a new expression in "3+4=7 5+6=11".
        # entries: (value, parser, start in line, text, what follows in the line, end in line)
        Entry = tuple[float, _Parser, int, str, str, int]
        lhs_of: list[Entry | None] = []
        rhs_of: list[Entry | None] = [None]
        first = _suffix_expr(line[left_start : eqs[0]], line[:left_start])
        if first is None:
            lhs_of.append(None)
        else:
            start = left_start + first[0]
            lhs_of.append((first[1], first[2], start, line[start : eqs[0]], "", eqs[0]))
        for k, (a, seg) in enumerate(zip(eqs, segs)):
            middle = k < len(segs) - 1
            lead = len(seg) - len(seg.lstrip())
            r = _prefix_expr(seg, line[a + 1 + len(seg) :], whole=middle)
            if r is None and middle:
                r = _prefix_expr(seg, line[a + 1 + len(seg) :], whole=False)
                sfx = _suffix_expr(seg, line[: a + 1])
                nxt_lhs = None
                if sfx is not None:
                    st = a + 1 + sfx[0]
                    nxt_lhs = (sfx[1], sfx[2], st, line[st : a + 1 + len(seg)], "", a + 1 + len(seg))
            else:
                nxt_lhs = None if r is None else (r[0], r[1], a + 1 + lead, seg[lead:], r[2], a + 1 + r[3])
            rhs_of.append(None if r is None else (r[0], r[1], a + 1 + lead, seg[lead:], r[2], a + 1 + r[3]))
            lhs_of.append(nxt_lhs if middle else None)

        for k in range(len(eqs)):
            if len(out) >= MAX_STEPS:
                break
            lhs, rhs = lhs_of[k], rhs_of[k + 1]
            if lhs is None or rhs is None or lhs[1].n_binary == 0:
                continue  # "48 = 48", "x = 5", unparsable: not a checkable step
            v, p, start, expr_text, _, _ = lhs
            rv, rp, _, rseg, rest, end = rhs
            stated = _stated_text(rp, rseg)
            ok = result_matches(v, rv, stated)
            if not ok and rp.n_binary > 0 and rp.operands:
                # running chain "3 × 4 = 12 × 2 = 24": the next expression starts with the result
                head = rp.operands[0]
                if result_matches(v, head.value, head.text):
                    ok, stated, rv = True, head.text, head.value
            if not ok and (rest[:4].lower() == "cent" or "%" in expr_text or rest.lstrip(".")[:1] == "%"):
                # "$2.50 - $2.24 = 26 cents", "3 / 21 * 100% = 14.28", "20 / 240 = 8.333...%"
                ok = result_matches(v * 100, rv, stated)
            if not ok and "/" in expr_text:
                # "25 / 1/3 = 75": a tight a/b inside a spaced division is one fraction
                alt = evaluate(_TIGHT_FRACTION_RE.sub(r"(\1/\2)", expr_text))
                ok = alt is not None and result_matches(alt, rv, stated)
            out.append(
                Step(
                    kind="inline",
                    expr=original[start : start + len(expr_text)].strip(),
                    stated=stated,
                    value=v,
                    stated_value=rv,
                    ok=ok,
                    start=offset + start,
                    end=offset + end,
                    operands=tuple(t.value for t in p.operands),
                )
            )
        pos = line.find("=", max(last_end, eqs[-1] + 1))


def _annotation_steps(text: str, out: list[Step]) -> set[int]:
    """Steps from GSM8K calculator annotations; returns the line numbers that had any."""
    lines_with: set[int] = set()
    lineno, counted_to = 0, 0
    for m in _ANNOTATION_RE.finditer(text):
        if len(out) >= MAX_STEPS:
            break
        body = m.group(1)
        eq = body.rfind("=")
        if eq <= 0:
            continue
        simple = _SIMPLE_BINARY_RE.fullmatch(body, 0, eq)
        if simple is not None and not (simple.group(2) == "/" and float(simple.group(3)) == 0):
            # fast path for "a op b", most annotations: no tokenizer, no parser
            a, b = float(simple.group(1)), float(simple.group(3))
            op = simple.group(2)
            v = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
            operands: tuple[float, ...] = (a, b)
        else:
            toks = _tokenize(body[:eq])
            parsed = _parse(toks) if toks else None
            if parsed is None or parsed[1].n_binary == 0:
                continue
            v, p = parsed
            operands = tuple(t.value for t in p.operands)
        stated_text = body[eq + 1 :].strip().lstrip("$€£ ")
        if _PLAIN_NUMBER_RE.fullmatch(stated_text):  # fast path: nearly every annotation
            sv = float(stated_text.replace(",", ""))
        else:
            stated_toks = _tokenize(body[eq + 1 :])
            stated = _parse(stated_toks) if stated_toks else None
            if stated is None:
                continue
            sv, sp = stated
            stated_text = _stated_text(sp, body[eq + 1 :])
        ok = result_matches(v, sv, stated_text)
        echo_m = _ECHO_RE.match(text, m.end())
        echo = None
        if echo_m:
            echo = echo_m.group(1)
            ev = float(echo.replace(",", ""))
            ok = ok and result_matches(v, ev, echo)
        # The computation starts where the text restating it begins ("48/2 = <<48/2=24>>24").
        line_start = max(text.rfind("\n", 0, m.start()) + 1, m.start() - MAX_EXPR_CHARS)
        start = line_start + len(text[line_start : m.start()].rstrip(_RESTATEMENT_CHARS))
        while start < m.start() and not (text[start].isdigit() or text[start] in "(.-"):
            start += 1
        lineno += text.count("\n", counted_to, m.start())
        counted_to = m.start()
        lines_with.add(lineno)
        out.append(
            Step(
                kind="annotation",
                expr=body[:eq].strip(),
                stated=stated_text,
                value=v,
                stated_value=sv,
                ok=ok,
                start=start,
                end=echo_m.end() if echo_m else m.end(),
                operands=operands,
                echo=echo,
            )
        )
    return lines_with


def find_steps(solution: str) -> list[Step]:
    """Every checkable step in a solution, in order of appearance.

    Two sources: GSM8K calculator annotations ``<<48/2=24>>`` and inline chains
    ``35 × 3 = 105``, ``100 - 50 - 30 - 15 = 5``, ``3 × 4 = 12 × 2 = 24``. A line holding a
    calculator annotation is not searched for inline chains as well (GSM8K writes every
    annotated computation twice: ``48/2 = <<48/2=24>>24``). A side without an operator
    (``48 = 48``, ``x = 5``) is a restatement, not a step. Only the first
    :data:`MAX_SEARCH_CHARS` characters are searched, for at most :data:`MAX_STEPS` steps.
    """
    if not solution or not isinstance(solution, str):
        return []
    text = solution[:MAX_SEARCH_CHARS]
    if "=" not in text:
        return []
    steps: list[Step] = []
    annotated = _annotation_steps(text, steps) if "<<" in text else set()
    offset = 0
    for lineno, line in enumerate(text.split("\n")):
        if lineno not in annotated and "=" in line and len(steps) < MAX_STEPS:
            blanked = line
            if len(line) <= 4 * MAX_EXPR_CHARS:  # bounded regex work on pathological lines
                blanked = _UNITS_RE.sub(lambda m: " " * len(m.group(0)), line)
            _inline_steps(blanked, offset, steps, line)
        offset += len(line) + 1
    if annotated:
        steps.sort(key=lambda s: s.start)
    return steps
