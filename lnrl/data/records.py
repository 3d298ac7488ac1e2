"""Typed records that flow between stages, and the JSONL files that hold them.

`Example` is one question with its gold chain-of-thought (what sources produce and SFT trains on).
`GroupRecord` is one question with k sampled completions, graded and optionally scored by the
verifier and the reference model (what the sampling stage writes and AFT/DPO read). The group file
schema is documented in docs/data.md; `read_groups` checks every field of every line, so a bad
file fails at load time with `path:line: field 'x': ...` instead of deep inside a training step.

Every line is decoded on its own (`iter_jsonl`): bytes that are not UTF-8, numbers JSON can write but
Python cannot hold (`NaN`, `Infinity`, `1e999999`, integers over Python's 4,300-digit limit) are a
bad record naming file, line and field, never a traceback or a silent "nan" answer. Writers are
atomic (lnrl.atomic): a crash leaves the old file.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnrl.atomic import atomic_open

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


def where(path: str | Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def check_file(path: str | Path, what: str = "input file") -> Path:
    """`path` as a Path when it is a readable file with some content; otherwise DataError naming it and
    `what` it was meant to be (a raw FileNotFoundError names no setting)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file ({what})")
    if p.is_dir():
        raise DataError(f"{path}: a directory, not a file ({what})")
    if p.stat().st_size == 0:
        raise DataError(f"{path}: empty file, 0 bytes ({what})")
    return p


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")


def iter_jsonl(path: str | Path, on_error: str = "raise", stats: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; line numbers start at 1.

    A line that is not a JSON object, holds bytes that are not UTF-8 or a number Python cannot hold
    (see `parse_line`) raises DataError, or with on_error="skip" is skipped and counted in
    stats["skipped"]. A UTF-8 byte-order mark and CRLF line ends are fine.
    """
    check_on_error(on_error)
    # surrogateescape: a bad byte becomes a lone surrogate in its own line, found and reported
    # there, instead of a UnicodeDecodeError from the file iterator that names no line.
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = parse_line(line, where(path, lineno))
            except DataError:
                if on_error == "raise":
                    raise
                if stats is not None:
                    stats["skipped"] = stats.get("skipped", 0) + 1
                continue
            yield lineno, obj


_BAD_BYTE_RE = re.compile("[\udc80-\udcff]")


class _Unrepresentable:
    """Stands in, during parsing, for a number Python cannot hold; `parse_line` reports its field."""

    def __init__(self, why: str) -> None:
        self.why = why


def parse_line(line: str, loc: str) -> dict:
    """One JSONL line (decoded with errors="surrogateescape") as a dict, or DataError naming loc."""
    bad = _BAD_BYTE_RE.search(line)
    if bad:
        column = len(line[:bad.start()].encode("utf-8", "surrogateescape")) + 1
        raise DataError(f"{loc}: not valid UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02x} at column {column} "
                        f"(re-save the file as UTF-8)")
    found: list[_Unrepresentable] = []

    def refuse(why: str) -> _Unrepresentable:
        found.append(_Unrepresentable(why))
        return found[-1]

    def parse_float(text: str) -> Any:
        value = float(text)
        return value if math.isfinite(value) else refuse(f"{text} is not a finite number")

    def parse_int(text: str) -> Any:
        # int() of a longer digit string raises a ValueError that names no line (Python's guard
        # against quadratic-time conversion).
        digits, limit = len(text.lstrip("-")), sys.get_int_max_str_digits()
        return refuse(f"integer with {digits} digits (Python reads at most {limit})") \
            if limit and digits > limit else int(text)

    try:
        obj = json.loads(line, parse_float=parse_float, parse_int=parse_int,
                         parse_constant=lambda text: refuse(f"{text} is not a finite number"))
    except json.JSONDecodeError as e:
        raise DataError(f"{loc}: malformed JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{loc}: malformed JSON: nested too deeply") from None
    if isinstance(obj, _Unrepresentable):
        raise DataError(f"{loc}: {obj.why}")
    if found:
        name, item = _find(obj, lambda v: isinstance(v, _Unrepresentable))
        raise DataError(f"{loc}: field '{name}': {item.why}")
    if not isinstance(obj, dict):
        raise DataError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _find(obj: Any, pred, prefix: str = "") -> tuple[str, Any]:
    """(dotted field name, value) of the first value in obj for which pred holds."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        name = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        if pred(v):
            return name, v
        hit = _find(v, pred, name)
        if hit[0]:
            return hit
    return "", None


def warn_skipped(path: str | Path, stats: dict) -> None:
    if stats.get("skipped"):
        log.warning("%s: skipped %d bad line(s) (on_error=skip)", path, stats["skipped"])


# ----------------------------------------------------------------------------- field checks

def get_field(obj: dict, name: str, typ: type | tuple[type, ...], loc: str, *, required: bool = True,
              nonempty: bool = False, prefix: str = "") -> Any:
    """obj[name] checked against typ; DataError "loc: field 'prefix+name': ..." otherwise."""
    full = prefix + name
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(f"{loc}: field '{full}': missing")
        return None
    value = obj[name]
    types = typ if isinstance(typ, tuple) else (typ,)
    # bool is an int subclass; a `true` where a number belongs is a bug, not a 1.
    if isinstance(value, bool) and bool not in types:
        raise DataError(f"{loc}: field '{full}': expected {_names(types)}, got bool")
    if not isinstance(value, types):
        raise DataError(f"{loc}: field '{full}': expected {_names(types)}, got {type(value).__name__}")
    # NaN / inf (from a hub dataset, a .json list or a caller) are no answer, weight or score.
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{loc}: field '{full}': expected a finite number, got {value}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise DataError(f"{loc}: field '{full}': empty")
    return value


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def parse_ref(obj: Any, loc: str, name: str) -> tuple[float, int] | None:
    """A cached reference SeqScores {"logp_sum": float <= 0, "n_tokens": int >= 1} as a tuple."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise DataError(f"{loc}: field '{name}': expected an object with logp_sum and n_tokens, "
                        f"got {type(obj).__name__}")
    logp = float(get_field(obj, "logp_sum", (int, float), loc, prefix=name + "."))
    n = get_field(obj, "n_tokens", int, loc, prefix=name + ".")
    if not math.isfinite(logp) or logp > 0:
        raise DataError(f"{loc}: field '{name}.logp_sum': a log-probability sum must be finite and <= 0, got {logp}")
    if n < 1:
        raise DataError(f"{loc}: field '{name}.n_tokens': must be >= 1, got {n}")
    return (logp, n)


def ref_to_json(ref: tuple[float, int] | None) -> dict | None:
    return None if ref is None else {"logp_sum": float(ref[0]), "n_tokens": int(ref[1])}


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Example:
    """One question with a gold chain-of-thought."""

    id: str  # stable, e.g. "gsm8k/train/17" or "gsm_symbolic/t12/5"
    question: str
    solution: str  # gold CoT as the model should write it ("... #### N" for GSM-style sources)
    answer: str  # reference final answer, normalized ("72")
    source: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """One sampled answer to a group's question."""

    text: str
    pred: str | None  # extracted final answer; None when nothing could be extracted
    correct: bool
    truncated: bool = False  # generation hit max_new_tokens before eos
    rank: int | None = None  # 1 = best, when the sampler ranked completions
    profile: dict[str, float] | None = None  # verifier error profile (wrongness, absurdity, ...)
    ref: tuple[float, int] | None = None  # cached reference (logp_sum, n_tokens)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"text": self.text, "pred": self.pred, "correct": self.correct,
                               "truncated": self.truncated}
        if self.rank is not None:
            out["rank"] = self.rank
        if self.profile is not None:
            out["profile"] = dict(self.profile)
        if self.ref is not None:
            out["ref"] = ref_to_json(self.ref)
        return out


@dataclass(frozen=True)
class GroupRecord:
    """One question with k sampled completions (a line of a group file)."""

    id: str
    question: str
    answer: str
    gold_solution: str
    completions: list[Completion]
    gold_ref: tuple[float, int] | None = None
    provenance: dict = field(default_factory=dict)
    # Where the group was read from ("path:line"), so that later errors (pairing, weights) can name
    # the line; not written to files and not part of equality.
    loc: str | None = field(default=None, compare=False, repr=False)

    @property
    def n_correct(self) -> int:
        return sum(c.correct for c in self.completions)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "question": self.question, "answer": self.answer,
                               "gold_solution": self.gold_solution}
        if self.gold_ref is not None:
            out["gold_ref"] = ref_to_json(self.gold_ref)
        out["completions"] = [c.to_json() for c in self.completions]
        out["provenance"] = dict(self.provenance)
        return out


def parse_completion(obj: Any, loc: str, i: int) -> Completion:
    name = f"completions[{i}]"
    if not isinstance(obj, dict):
        raise DataError(f"{loc}: field '{name}': expected an object, got {type(obj).__name__}")
    p = name + "."
    rank = get_field(obj, "rank", int, loc, required=False, prefix=p)
    if rank is not None and rank < 1:
        raise DataError(f"{loc}: field '{p}rank': must be >= 1 (1 = best), got {rank}")
    profile = get_field(obj, "profile", dict, loc, required=False, prefix=p)
    if profile is not None:
        for k in profile:
            get_field(profile, k, (int, float), loc, prefix=p + "profile.")
        profile = {k: float(v) for k, v in profile.items()}
    return Completion(
        text=get_field(obj, "text", str, loc, prefix=p),
        pred=get_field(obj, "pred", str, loc, required=False, prefix=p),
        correct=get_field(obj, "correct", bool, loc, prefix=p),
        truncated=bool(get_field(obj, "truncated", bool, loc, required=False, prefix=p) or False),
        rank=rank,
        profile=profile,
        ref=parse_ref(obj.get("ref"), loc, p + "ref"),
    )


def parse_group(obj: dict, loc: str) -> GroupRecord:
    comps = get_field(obj, "completions", list, loc)
    return GroupRecord(
        id=get_field(obj, "id", str, loc, nonempty=True),
        question=get_field(obj, "question", str, loc, nonempty=True),
        answer=get_field(obj, "answer", str, loc, nonempty=True),
        gold_solution=get_field(obj, "gold_solution", str, loc, nonempty=True),
        completions=[parse_completion(c, loc, i) for i, c in enumerate(comps)],
        gold_ref=parse_ref(obj.get("gold_ref"), loc, "gold_ref"),
        provenance=get_field(obj, "provenance", dict, loc, required=False) or {},
        loc=loc,
    )


def read_groups(path: str | Path, on_error: str = "raise", stats: dict | None = None) -> list[GroupRecord]:
    """Read a group JSONL file, validating every line.

    A malformed line or a missing/ill-typed field raises DataError("path:line: field 'x': ...");
    with on_error="skip" the line is skipped, counted in stats["skipped"] and a warning logged.
    Duplicate ids are an error either way (pairs and caches are keyed by id). A missing path is a
    DataError naming it; an empty file gives no groups (a trainer refuses that, naming the file).
    """
    stats = {} if stats is None else stats
    stats.setdefault("skipped", 0)
    groups: list[GroupRecord] = []
    seen: dict[str, int] = {}
    if not Path(path).is_file():
        check_file(path, "group file")  # names what is wrong: missing, a directory
    for lineno, obj in iter_jsonl(path, on_error, stats):
        loc = where(path, lineno)
        try:
            g = parse_group(obj, loc)
        except DataError:
            if on_error == "raise":
                raise
            stats["skipped"] += 1
            continue
        if g.id in seen:
            raise DataError(f"{loc}: field 'id': duplicate id {g.id!r} (first at line {seen[g.id]})")
        seen[g.id] = lineno
        groups.append(g)
    warn_skipped(path, stats)
    return groups


def write_groups(path: str | Path, groups: Iterable[GroupRecord]) -> None:
    """Write groups as JSONL (one question per line), atomically: a crash leaves the old file."""
    with atomic_open(path, "w") as f:
        for g in groups:
            f.write(json.dumps(g.to_json(), ensure_ascii=False) + "\n")
