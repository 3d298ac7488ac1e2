"""Bad input through the sources (issue 10): non-finite gold answers, bytes that are not UTF-8 and
integers over Python's 4,300-digit limit are bad records naming file, line and field, which
on_error="skip" skips and counts. Before, they became gold answers "nan"/"inf" or crashed with a
traceback naming no file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lnrl.data import DataError
from lnrl.data.sources import build_source

GOOD = {"question": "What is 2 + 2?", "solution": "2 + 2 = 4\n#### 4", "answer": 4}


def write_rows(path: Path, rows: list) -> Path:
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows) + b"\n")
    return path


def jsonl_source(path: Path, **kw):
    return build_source({"name": "jsonl", "path": str(path), "answer_field": "answer", "eval_fraction": 0.0, **kw})


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999999"])
def test_non_finite_gold_answer_is_an_error(tmp_path, raw):
    bad = json.dumps({**GOOD, "answer": "X"}).replace('"X"', raw).encode()
    path = write_rows(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError, match=rf"^{path}:3: field 'answer': {raw} is not a finite number"):
        jsonl_source(path)
    split = jsonl_source(path, on_error="skip")
    assert [e.answer for e in split.train] == ["4", "4", "4"] and split.info["skipped"] == 1


def test_non_finite_answer_from_a_json_list_is_an_error(tmp_path):
    # .json lists are parsed by the source itself; get_field still refuses the NaN it reads.
    path = tmp_path / "d.json"
    path.write_text("[" + json.dumps(GOOD) + ', {"question": "q", "solution": "s", "answer": NaN}]')
    with pytest.raises(DataError, match=rf"^{path}: item 1: field 'answer': expected a finite number, got nan"):
        jsonl_source(path)


def test_huge_integer_is_a_bad_record(tmp_path):
    big = json.dumps({**GOOD, "answer": "X"}).replace('"X"', "7" * 5000).encode()
    path = write_rows(tmp_path / "d.jsonl", [GOOD, big])
    with pytest.raises(DataError, match=rf"^{path}:2: field 'answer': integer with 5000 digits"):
        jsonl_source(path)
    assert jsonl_source(path, on_error="skip").info["skipped"] == 1


def test_non_utf8_line_is_a_bad_record(tmp_path):
    gsm = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}
    bad = json.dumps(gsm).encode().replace(b"apples", b"pommes \xe0 cidre")
    path = write_rows(tmp_path / "g.jsonl", [gsm, bad, gsm])
    cfg = {"name": "gsm8k", "path": str(path), "eval_fraction": 0.0}
    column = bad.index(b"\xe0") + 1
    with pytest.raises(DataError, match=rf"^{path}:2: not valid UTF-8: byte 0xe0 at column {column}"):
        build_source(cfg)
    split = build_source({**cfg, "on_error": "skip"})
    assert len(split.train) == 2 and split.info["skipped"] == 1
    assert [e.meta["line"] for e in split.train] == [1, 3]  # later lines keep their numbers
