"""Per-question records of one evaluated model (an lnrl-eval dir or an lnrl-train run dir), checked.

An evaluation writes, next to its aggregates (`metrics.json`, `val/*` keys):

- `generations.jsonl` (lnrl-eval, and lnrl-train with eval on; `generations.json`, a JSON list, in
  lnrl-train runs made before issue 11): one record per held-out question: `id`, `correct`,
  `n_tokens`, `truncated`, and since issue 8 `degenerate`, `no_answer`, `near_miss` (bool or null);
- `assessment.jsonl`: `id`, `pairs`, `right` per candidate question with at least one pair;
- `nll.jsonl`: `id`, `logp_sum`, `n_tokens` per held-out question with a scored gold solution;
- `harness.jsonl` (eval.protocol=harness_gsm8k): `id`, `strict_match`, `flexible_extract` (bools) per
  held-out question;
- `samples.jsonl` (eval.samples): `id`, `pass_at_1`, `pass_at_k`, `maj_at_k` per held-out question.

Older runs lack the newer files or fields: a metric whose records are missing is then read from
metrics.json alone (lnrl.reporting.compare shows it without an interval). A field present on some
records of a file and absent on others is an error, not a missing metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATIONS = ("generations.jsonl", "generations.json")  # the second: lnrl-train runs before issue 11
ASSESSMENT = "assessment.jsonl"
NLL = "nll.jsonl"
HARNESS = "harness.jsonl"
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"


@dataclass
class RunRecords:
    """What one evaluated model wrote. A table of records is {id: record}; None when the file is absent."""

    dir: Path
    metrics: dict[str, float]
    tables: dict[str, dict[Hashable, dict] | None] = field(default_factory=dict)  # generations, assessment, ...
    files: dict[str, Path] = field(default_factory=dict)

    def table(self, kind: str) -> dict[Hashable, dict] | None:
        return self.tables.get(kind)


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each record; a JSON list (generations.json) counts its items from 1."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of per-question records, got {type(rows).__name__}")
        out = list(enumerate(rows, 1))
    else:
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
    for i, row in out:
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object per record, got {type(row).__name__}")
    return out


def _by_id(path: Path) -> dict[Hashable, dict]:
    table: dict[Hashable, dict] = {}
    line_of: dict[Hashable, int] = {}
    for i, row in _read_rows(path):
        if "id" not in row or isinstance(row["id"], (dict, list)) or row["id"] is None:
            raise ValueError(f"{path}:{i}: field 'id' is missing or not a string/number: {row.get('id')!r}")
        qid = row["id"]
        if qid in table:
            raise ValueError(f"{path}:{i}: question id {qid!r} appears again (first at line {line_of[qid]})")
        table[qid], line_of[qid] = row, i
        row["_line"] = i
    return table


def _numeric_metrics(path: Path) -> dict[str, float]:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return {k: float(v) for k, v in raw.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def load_records(run_dir: str | Path) -> RunRecords:
    """metrics.json (required) and whichever per-question files the dir holds."""
    run_dir = Path(run_dir)
    mpath = run_dir / METRICS
    if not mpath.exists():
        raise FileNotFoundError(f"{run_dir}: no {METRICS} (not an evaluated model's dir, or its evaluation "
                                "did not finish)")
    rec = RunRecords(run_dir, _numeric_metrics(mpath))
    gen = next((run_dir / n for n in GENERATIONS if (run_dir / n).exists()), None)
    for kind, path in (("generations", gen), ("assessment", run_dir / ASSESSMENT), ("nll", run_dir / NLL),
                       ("harness", run_dir / HARNESS), ("samples", run_dir / SAMPLES)):
        if path is not None and path.exists():
            rec.tables[kind], rec.files[kind] = _by_id(path), path
        else:
            rec.tables[kind] = None
    return rec


def _check_value(path: Path, row: dict, name: str, kind: str) -> Any:
    v = row[name]
    where = f"{path}:{row['_line']}: field '{name}'"
    if kind == "flag":  # bool; 0/1 accepted
        if isinstance(v, bool) or v in (0, 1):
            return float(v)
        raise ValueError(f"{where} must be true/false, got {v!r}")
    if kind == "flag_or_null":
        return 0.0 if v is None else _check_value(path, {**row, name: v}, name, "flag")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where} must be a finite number, got {v!r}")
    if kind == "count" and v < 0:
        raise ValueError(f"{where} must be >= 0, got {v!r}")
    return float(v)


def column(rec: RunRecords, kind: str, name: str, check: str) -> dict[Hashable, float] | None:
    """{id: value} of field `name` of the `kind` records, checked (`check`: flag | flag_or_null | count
    | number); None when the file is absent or no record has the field (an older run); {} for an empty
    file (the run measured the metric on no question, e.g. no candidate group with a pair)."""
    table = rec.table(kind)
    if table is None:
        return None
    if not table:
        return {}
    have = [qid for qid, row in table.items() if name in row]
    if not have:
        return None
    if len(have) != len(table):
        missing = next(row for row in table.values() if name not in row)
        raise ValueError(f"{rec.files[kind]}:{missing['_line']}: field '{name}' is missing, but other records of "
                         f"the file have it (question id {missing['id']!r})")
    return {qid: _check_value(rec.files[kind], row, name, check) for qid, row in table.items()}
