"""Bad preference files at training time (issue 10): errors that name the file (and line), and no
useless on_exception.ckpt when training never started.

Before: a missing preference file raised a raw FileNotFoundError, an empty one a DataError without the
file name, and either also wrote checkpoints/on_exception.ckpt (SaveOnException fired before any step).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from conftest import compose_cfg
from lnrl.apps.train import train
from lnrl.data.records import DataError
from lnrl.utils import PACKAGE_DIR

FIXTURE = PACKAGE_DIR / "fixtures" / "groups_tiny.jsonl"
# experiment=fixtures turns checkpoints off; these runs keep them on, as a real run does.
RUN = ["experiment=fixtures", "callbacks=default", "trainer.max_steps=2", "eval.enabled=false"]


def run(tmp_path: Path, prefs: Path | str, *extra: str) -> None:
    train(compose_cfg([*RUN, "method=dpo", f"data.prefs_path={prefs}", *extra], tmp_path / "run"))


@pytest.mark.parametrize("content,message", [
    (None, "no such file (data.prefs_path, the group file)"),
    ("", "empty file, 0 bytes (data.prefs_path, the group file)"),
    ("\n\n", "no groups to train on: the file holds no records"),
    ("{not json\n", "no groups to train on: all 1 lines were bad and skipped (on_error=skip)"),
])
def test_missing_or_empty_preference_file_is_named_and_writes_no_checkpoint(content, message, tmp_path):
    prefs = tmp_path / "groups.jsonl"
    if content is not None:
        prefs.write_text(content)
    with pytest.raises(DataError) as e:
        run(tmp_path, prefs, "data.on_error=skip")
    assert str(e.value).startswith(f"{prefs}: ") and message in str(e.value), str(e.value)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_data_error_at_setup_writes_no_checkpoint(tmp_path):
    """A malformed line (found in setup, before any step): the error names file and line; nothing saved."""
    prefs = tmp_path / "groups.jsonl"
    lines = FIXTURE.read_text().splitlines()
    prefs.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(DataError, match=rf"{prefs}:2: malformed JSON"):
        run(tmp_path, prefs)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("value,expected", [
    (None, "{loc}: group '{id}': completions[{j}]: field 'profile.wrongness': missing"),
    (-1.0, "{loc}: group '{id}': completions[{j}]: field 'profile.wrongness': expected a finite number >= 0, got -1.0"),
    ("high", "{loc}: field 'completions[{j}].profile.wrongness': expected int or float, got str"),  # read_groups
])
def test_weighted_dpo_weight_errors_name_file_line_and_field(value, expected, tmp_path):
    """Through lnrl-train's datamodule, not only make_pairs: the group's file and line are known."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    bad = next(i for i, r in enumerate(rows) if any(not c["correct"] for c in r["completions"]))
    j = next(j for j, c in enumerate(rows[bad]["completions"]) if not c["correct"])
    if value is None:
        del rows[bad]["completions"][j]["profile"]["wrongness"]
    else:
        rows[bad]["completions"][j]["profile"]["wrongness"] = value
    prefs = tmp_path / "groups.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        train(compose_cfg([*RUN, "method=wdpo", f"data.prefs_path={prefs}", "data.pairing=all",
                           "data.weight_field=profile.wrongness"], tmp_path / "run"))
    assert str(e.value).startswith(expected.format(loc=f"{prefs}:{bad + 1}", id=rows[bad]["id"], j=j)), str(e.value)


@pytest.mark.parametrize("clip", [1.0, 1.5])
def test_weight_clip_from_the_config_caps_weights_at_a_multiple_of_the_median(clip, tmp_path):
    """data.weight_clip=c reaches make_pairs: each pair's raw weight (its rejected completion's wrongness,
    read here from the JSON) is capped at c x the median positive raw weight, then scaled to mean 1."""
    from hydra.utils import instantiate

    from lnrl.models import load_tokenizer

    cfg = compose_cfg([*RUN, "method=wdpo", "data.pairing=all", "data.weight_field=profile.wrongness",
                       f"data.weight_clip={clip}"], tmp_path)
    dm = instantiate(cfg.data, tokenizer=load_tokenizer({"source": "tiny"}), _convert_="all")
    dm.use_kind("pairs", method="PairModule")
    dm.setup("fit")
    rows = {r["id"]: r for r in map(json.loads, FIXTURE.read_text().splitlines())}
    raw = [rows[p.meta["group_id"]]["completions"][p.meta["rejected"]]["profile"]["wrongness"] for p in dm.pairs]
    cap = clip * statistics.median(w for w in raw if w > 0)
    capped = [min(w, cap) for w in raw]
    expected = [w * len(capped) / sum(capped) for w in capped]
    assert [p.weight for p in dm.pairs] == pytest.approx(expected)
    assert dm.stats["weights_clipped"] == sum(w > cap for w in raw) > 0


def test_all_zero_weights_name_the_file(tmp_path):
    """A fault of the whole file (every weight 0: nothing to normalise) has no line; the file is named."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for r in rows:
        for c in r["completions"]:
            c["profile"]["wrongness"] = 0.0
    prefs = tmp_path / "groups.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"^{prefs}: weight_field 'profile.wrongness': every weight is 0"):
        train(compose_cfg([*RUN, "method=wdpo", f"data.prefs_path={prefs}", "data.pairing=all",
                           "data.weight_field=profile.wrongness"], tmp_path / "run"))
