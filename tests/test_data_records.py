"""Group files: the shipped fixtures, round trip, and every error path naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lnrl
from lnrl.data import DataError, read_groups, write_groups

FIXTURES = Path(lnrl.__file__).parent / "fixtures"
GROUPS = FIXTURES / "groups_tiny.jsonl"


def raw_lines(path=GROUPS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, objs) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def test_fixture_reads_with_the_documented_shape():
    groups = read_groups(GROUPS)
    assert len(groups) == 6 and all(len(g.completions) == 4 for g in groups)
    by_id = {g.id: g for g in groups}
    assert by_id["gsm_symbolic/t10/0"].n_correct == 4  # all correct
    assert by_id["gsm_symbolic/t50/0"].n_correct == 0  # all incorrect
    c = by_id["gsm_symbolic/t16/0"].completions[3]
    assert c.truncated and c.pred is None and not c.correct
    for g, raw in zip(groups, raw_lines()):
        assert g.gold_ref == (raw["gold_ref"]["logp_sum"], raw["gold_ref"]["n_tokens"])
        for comp, rc in zip(g.completions, raw["completions"]):
            assert comp.ref == (rc["ref"]["logp_sum"], rc["ref"]["n_tokens"]) and comp.ref[0] < 0
            assert comp.profile["wrongness"] == rc["profile"]["wrongness"]
        assert sorted(c.rank for c in g.completions) == [1, 2, 3, 4]
        assert g.provenance["k"] == 4


def test_fixture_refs_count_real_tokens():
    from lnrl.models import load_tokenizer

    tok = load_tokenizer({"source": "tiny"})
    for g in read_groups(GROUPS):
        for c in g.completions:  # eos included, except for a completion cut at the token limit
            eos = "" if c.truncated else tok.eos_token
            assert c.ref[1] == len(tok(c.text + eos, add_special_tokens=False).input_ids)


def test_round_trip(tmp_path):
    groups = read_groups(GROUPS)
    write_groups(tmp_path / "out" / "g.jsonl", groups)
    assert read_groups(tmp_path / "out" / "g.jsonl") == groups
    assert raw_lines(tmp_path / "out" / "g.jsonl") == raw_lines()


def test_malformed_line_names_path_and_line():
    bad = FIXTURES / "bad_line.jsonl"
    with pytest.raises(DataError, match=rf"{bad}:3: malformed JSON"):
        read_groups(bad)
    stats: dict = {}
    groups = read_groups(bad, on_error="skip", stats=stats)
    assert stats["skipped"] == 1 and [g.id for g in groups] == [
        "gsm_symbolic/t43/0", "gsm_symbolic/t16/0", "gsm_symbolic/t50/0"]


@pytest.mark.parametrize("mutate,field,what", [
    (lambda d: d.pop("answer"), "answer", "missing"),
    (lambda d: d.update(answer="  "), "answer", "empty"),
    (lambda d: d.update(question=7), "question", "expected str, got int"),
    (lambda d: d["completions"][1].update(correct="yes"), "completions[1].correct", "expected bool, got str"),
    (lambda d: d["completions"][2].pop("text"), "completions[2].text", "missing"),
    (lambda d: d["completions"][0]["ref"].update(n_tokens=3.5), "completions[0].ref.n_tokens", "expected int"),
    (lambda d: d["completions"][0]["ref"].update(logp_sum=2.0), "completions[0].ref.logp_sum", "<= 0"),
    (lambda d: d["completions"][3].update(rank=0), "completions[3].rank", ">= 1"),
    (lambda d: d["completions"][0]["profile"].update(wrongness="high"), "completions[0].profile.wrongness",
     "expected int or float"),
    (lambda d: d.update(gold_ref={"logp_sum": -1.0}), "gold_ref.n_tokens", "missing"),
    (lambda d: d.update(completions={}), "completions", "expected list, got dict"),
])
def test_bad_field_names_line_and_field(tmp_path, mutate, field, what):
    lines = raw_lines()
    mutate(lines[1])
    path = write_lines(tmp_path / "g.jsonl", lines)
    with pytest.raises(DataError) as e:
        read_groups(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: field '{field}':") and what in msg
    stats: dict = {}
    assert len(read_groups(path, on_error="skip", stats=stats)) == 5 and stats["skipped"] == 1


def test_non_object_line_and_duplicate_ids(tmp_path):
    lines = raw_lines()
    with pytest.raises(DataError, match=r":2: expected a JSON object, got list"):
        read_groups(write_lines(tmp_path / "a.jsonl", [lines[0], "[1, 2]"]))
    with pytest.raises(DataError, match=r":3: field 'id': duplicate id .* \(first at line 1\)"):
        read_groups(write_lines(tmp_path / "b.jsonl", [lines[0], lines[1], lines[0]]))


def test_blank_lines_keep_line_numbers(tmp_path):
    lines = raw_lines()
    lines[1].pop("gold_solution")
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: field 'gold_solution': missing"):
        read_groups(path)


def test_optional_fields_may_be_absent(tmp_path):
    d = raw_lines()[0]
    d.pop("gold_ref")
    d.pop("provenance")
    for c in d["completions"]:
        for k in ("rank", "profile", "ref", "truncated", "pred"):
            c.pop(k)
    (g,) = read_groups(write_lines(tmp_path / "g.jsonl", [d]))
    assert g.gold_ref is None and g.provenance == {}
    assert all(c.ref is None and c.rank is None and c.profile is None and c.pred is None and not c.truncated
               for c in g.completions)


# ----------------------------------------------------------------------------- bad bytes and numbers (issue 10)
# Each once crashed with a bare traceback (UnicodeDecodeError, ValueError from int()) or read as a
# silent "inf"/"nan"; each is now a bad record naming file, line and (where there is one) field,
# that on_error="skip" skips and counts.


def _bad_group_file(tmp_path: Path, bad_line: bytes) -> Path:
    """The fixture's first three lines with line 2 replaced by `bad_line`."""
    lines = GROUPS.read_bytes().splitlines()[:3]
    lines[1] = bad_line
    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _with_raw(obj: dict, key_path: list, raw: str) -> bytes:
    """obj as JSON with the value at key_path replaced by the raw JSON text `raw`."""
    marker = "__RAW_NUMBER__"
    target = obj
    for k in key_path[:-1]:
        target = target[k]
    target[key_path[-1]] = marker
    return json.dumps(obj).replace(f'"{marker}"', raw).encode()


@pytest.mark.parametrize("raw,field,what", [
    ("NaN", "completions[1].profile.wrongness", "NaN is not a finite number"),
    ("Infinity", "completions[1].profile.wrongness", "Infinity is not a finite number"),
    ("-Infinity", "gold_ref.logp_sum", "-Infinity is not a finite number"),
    ("1e999999", "completions[0].ref.logp_sum", "1e999999 is not a finite number"),
    ("1" + "0" * 5000, "provenance.seed", "integer with 5001 digits"),
    ("-" + "9" * 4301, "completions[2].rank", "integer with 4301 digits"),
])
def test_unrepresentable_numbers_name_line_and_field(tmp_path, raw, field, what):
    obj = raw_lines()[1]
    keys = [int(k) if k.isdigit() else k for k in field.replace("[", ".").replace("]", "").split(".")]
    path = _bad_group_file(tmp_path, _with_raw(obj, keys, raw))
    with pytest.raises(DataError) as e:
        read_groups(path)
    assert str(e.value).startswith(f"{path}:2: field '{field}': {what}")
    stats: dict = {}
    assert len(read_groups(path, on_error="skip", stats=stats)) == 2 and stats["skipped"] == 1


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"caf\xe9", b"\xc3("])
def test_non_utf8_bytes_name_line_and_column(tmp_path, bad):
    line = json.dumps(raw_lines()[1]).encode().replace(b'"question": "', b'"question": "' + bad, 1)
    path = _bad_group_file(tmp_path, line)
    col = line.index(bad) + 1 + (bad == b"caf\xe9") * 3
    with pytest.raises(DataError, match=rf"^{path}:2: not valid UTF-8: byte 0x[0-9a-f]{{2}} at column {col}"):
        read_groups(path)
    stats: dict = {}
    groups = read_groups(path, on_error="skip", stats=stats)
    assert stats["skipped"] == 1 and [g.id for g in groups] == [raw_lines()[0]["id"], raw_lines()[2]["id"]]


def test_a_bad_line_does_not_hide_the_next_ones(tmp_path):
    # Decoding is per line: lines after a bad byte keep their numbers and are read.
    lines = GROUPS.read_bytes().splitlines()
    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\n".join([lines[0], b"\xff", lines[1], lines[2]]) + b"\n")
    stats: dict = {}
    assert len(read_groups(path, on_error="skip", stats=stats)) == 3 and stats["skipped"] == 1
    path.write_bytes(b"\n".join([lines[0], lines[1], b'{"id": NaN}']) + b"\n")
    with pytest.raises(DataError, match=rf"^{path}:3: field 'id': NaN is not a finite number"):
        read_groups(path)


def test_utf8_bom_and_crlf_are_read(tmp_path):
    # A file saved by a Windows editor: BOM and CRLF line ends are not errors.
    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(GROUPS.read_bytes().splitlines()) + b"\r\n")
    assert read_groups(path) == read_groups(GROUPS)


def test_get_field_refuses_non_finite_numbers():
    from lnrl.data.records import get_field

    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(DataError, match=r"^f.jsonl:3: field 'answer': expected a finite number, got (nan|inf|-inf)"):
            get_field({"answer": value}, "answer", (str, int, float), "f.jsonl:3")
    assert get_field({"answer": 1e308}, "answer", (str, int, float), "f.jsonl:3") == 1e308
    assert get_field({"answer": "nan"}, "answer", (str, int, float), "f.jsonl:3") == "nan"  # text is text


def test_write_groups_is_atomic(tmp_path):
    # A failure while producing the rows leaves the previous file whole (and no temporary file).
    groups = read_groups(GROUPS)
    path = tmp_path / "g.jsonl"
    write_groups(path, groups)
    before = path.read_bytes()

    def rows():
        yield groups[0]
        raise RuntimeError("sampler crashed")

    with pytest.raises(RuntimeError, match="sampler crashed"):
        write_groups(path, rows())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["g.jsonl"]
