"""lnrl-refscores: cached reference scores equal the model's own scores of the training rows; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import lnrl.reference as rs
from lnrl.data.records import Completion, GroupRecord, read_groups
from lnrl.data.tokenize import encode
from lnrl.models import load_model, load_tokenizer
from lnrl.apps.refscores import refscores
from lnrl.reference import compute_ref_scores, model_id, score_file

CONF = Path(__file__).resolve().parents[1] / "lnrl" / "conf"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def model(tok):
    return load_model(TINY, tok)


class Killed(Exception):
    pass


def make_groups(n: int) -> list[GroupRecord]:
    """n small groups, no refs; question i has two completions (one right, one wrong)."""
    return [GroupRecord(id=f"q{i}", question=f"What is {i} + {i}?", answer=str(2 * i),
                        gold_solution=f"{i} + {i} = {2 * i}\n#### {2 * i}",
                        completions=[Completion(text=f"#### {2 * i}", pred=str(2 * i), correct=True),
                                     Completion(text=f"{i} + {i} is {3 * i}, a long wrong answer.\n#### {3 * i}",
                                                pred=str(3 * i), correct=False)])
            for i in range(n)]


def write(path: Path, groups: list[GroupRecord]) -> Path:
    path.write_text("".join(json.dumps(g.to_json()) + "\n" for g in groups))
    return path


@torch.no_grad()
def naive_score(model, tok, question: str, text: str, max_length: int) -> tuple[float, int]:
    """log p(completion | prompt) of one unpadded row with a full log_softmax: sum_t log softmax(z_{t-1})[x_t]."""
    row = encode(tok, question, text, max_length)
    ids = torch.tensor([row["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    mask = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
    return float(logp[mask].sum()), int(mask.sum())


def test_refs_equal_unbatched_scores(model, tok):
    """Batching (length-sorted, right-padded) must not change a row's score; n_tokens = completion + eos."""
    groups = make_groups(3)
    out = compute_ref_scores(model, tok, groups, batch_size=4, max_length=256)
    for g_in, g in zip(groups, out):
        assert g.id == g_in.id
        lp, n = naive_score(model, tok, g.question, g.gold_solution, 256)
        assert g.gold_ref[1] == n and g.gold_ref[0] == pytest.approx(lp, abs=1e-4)
        for c in g.completions:
            lp, n = naive_score(model, tok, g.question, c.text, 256)
            assert c.ref[1] == n == len(tok(c.text + tok.eos_token, add_special_tokens=False).input_ids)
            assert c.ref[0] == pytest.approx(lp, abs=1e-4) and c.ref[0] < 0


def test_truncation_matches_training_rows(model, tok):
    """With a small max_length the long wrong answer is cut exactly as the datamodule cuts it."""
    groups = make_groups(1)
    prompt_len = len(encode(tok, groups[0].question, "", 10_000)["input_ids"]) - 1  # "" + eos = 1 token
    max_length = prompt_len + 5
    (g,) = compute_ref_scores(model, tok, groups, batch_size=2, max_length=max_length)
    assert g.completions[1].ref[1] == 5
    lp, n = naive_score(model, tok, g.question, g.completions[1].text, max_length)
    assert n == 5 and g.completions[1].ref[0] == pytest.approx(lp, abs=1e-4)
    # a prompt that alone fills max_length yields no trainable row, hence no ref
    (g,) = compute_ref_scores(model, tok, groups, batch_size=2, max_length=prompt_len)
    assert g.gold_ref is None and all(c.ref is None for c in g.completions)


def test_resume_after_kill_skips_scored_groups(model, tok, tmp_path, monkeypatch):
    """A kill during chunk 2 keeps chunk 1 on disk; the rerun scores only the rest and ends where a clean run ends."""
    src = write(tmp_path / "groups.jsonl", make_groups(5))
    clean = tmp_path / "clean.jsonl"
    score_file(model, tok, src, clean, ref_model="m", batch_size=4, max_length=256, chunk_size=2, progress=False)

    calls: list[list[str]] = []
    kill_at = [2]  # the call that dies; later runs are left alone
    real = rs.compute_ref_scores

    def flaky(model, tokenizer, groups, *args, **kwargs):
        calls.append([g.id for g in groups])
        if len(calls) == kill_at[0]:
            kill_at[0] = 0
            raise Killed  # killed mid-run
        return real(model, tokenizer, groups, *args, **kwargs)

    monkeypatch.setattr(rs, "compute_ref_scores", flaky)
    with pytest.raises(Killed):
        score_file(model, tok, src, ref_model="m", batch_size=4, max_length=256, chunk_size=2, progress=False)
    partial = read_groups(src)  # overwritten in place, chunk 1 only
    assert [g.provenance.get("ref_model") for g in partial] == ["m", "m", None, None, None]
    assert partial[0].completions[0].ref is not None and partial[2].completions[0].ref is None

    calls.clear()
    counts = score_file(model, tok, src, ref_model="m", batch_size=4, max_length=256, chunk_size=2, progress=False)
    assert calls == [["q2", "q3"], ["q4"]]
    assert counts == {"groups": 5, "scored": 3, "skipped": 2}
    assert [g.to_json() for g in read_groups(src)] == [g.to_json() for g in read_groups(clean)]

    # nothing left to do; another model or max_length means new refs
    calls.clear()
    assert score_file(model, tok, src, ref_model="m", max_length=256, progress=False)["scored"] == 0
    assert calls == []
    assert score_file(model, tok, src, ref_model="other", max_length=256, progress=False)["scored"] == 5
    assert score_file(model, tok, src, ref_model="other", max_length=128, progress=False)["scored"] == 5


def test_resume_into_separate_output_keeps_input(model, tok, tmp_path, monkeypatch):
    src = write(tmp_path / "groups.jsonl", make_groups(3))
    before = src.read_text()
    out = tmp_path / "scored.jsonl"
    real = rs.compute_ref_scores
    n_calls = []

    def flaky(*args, **kwargs):
        n_calls.append(1)
        if len(n_calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "compute_ref_scores", flaky)
    with pytest.raises(RuntimeError):
        score_file(model, tok, src, out, ref_model="m", max_length=256, chunk_size=1, progress=False)
    monkeypatch.setattr(rs, "compute_ref_scores", real)
    assert score_file(model, tok, src, out, ref_model="m", max_length=256, chunk_size=1,
                      progress=False)["skipped"] == 1
    assert src.read_text() == before
    assert all(g.gold_ref is not None and g.provenance["ref_model"] == "m" for g in read_groups(out))


def test_model_id_ignores_paths_not_weights():
    a = model_id({"source": "tiny", "init_seed": 0, "cache_dir": "/a"})
    assert a == model_id({"source": "tiny", "init_seed": 0, "cache_dir": "/b"})
    assert a != model_id({"source": "tiny", "init_seed": 1, "cache_dir": "/a"})


def test_hydra_app_scores_file(tmp_path, model, tok):
    """The lnrl-refscores config composes and runs with the tiny model; refs match the tiny model's scores."""
    src = write(tmp_path / "groups.jsonl", make_groups(2))
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("refscores", return_hydra_config=True,
                      overrides=["model=tiny", f"input={src}", "data.max_length=256", "device=cpu"])
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    assert refscores(cfg) == {"groups": 2, "scored": 2, "skipped": 0}
    g = read_groups(src)[1]
    assert g.provenance["ref_model"] == model_id({k: v for k, v in cfg.model.items()})
    lp, n = naive_score(model, tok, g.question, g.completions[1].text, 256)
    assert g.completions[1].ref == (pytest.approx(lp, abs=1e-4), n)
