"""lnrl-sample: grading and de-duplication, resumable deterministic shards, checkpoint loading, the Hydra app."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import compose_cfg
from lnrl.data.records import Example, read_groups
from lnrl.generation import Generation
from lnrl.models import load_model, load_tokenizer
from lnrl.apps.sample import sample
from lnrl.models import load_policy
from lnrl.sampling import grade, sample_to_dir, shard_seed
from lnrl.verify import DIMENSIONS, MathVerifier

TINY = {"source": "tiny", "name": "tiny-llama", "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2, "init_seed": 0}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


@pytest.fixture(scope="module")
def model(tok):
    return load_model(TINY, tok)


def questions(n: int) -> list[Example]:
    return [Example(id=f"q/{i}", question=f"Tom has {i} apples and buys {i + 2} more. How many now?",
                    solution=f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}", answer=str(2 * i + 2), source="toy")
            for i in range(n)]


def test_shard_seed_is_stable_and_depends_on_seed_and_id():
    # sha256-derived, so the same in every process (hash() of a str is salted per process).
    assert shard_seed(0, "q/0") == shard_seed(0, "q/0")
    assert len({shard_seed(0, "q/0"), shard_seed(1, "q/0"), shard_seed(0, "q/1")}) == 3
    assert 0 <= shard_seed(123, "gsm_symbolic/t3/7") < 2**31


def test_grade_dedupes_extracts_and_profiles():
    ex = questions(3)[2]  # 2 + 4 = 6
    gens = [Generation("2 + 4 = 6\n#### 6", 9, False), Generation("2 + 4 = 6\n#### 6", 9, False),
            Generation("2 + 4 = 7\n#### 7", 9, False), Generation("2 + 4 = 6 and 6 and 6", 12, True)]
    comps, dupes = grade(MathVerifier(), ex, gens)
    assert dupes == 1 and [c.text for c in comps] == [gens[0].text, gens[2].text, gens[3].text]
    assert [c.pred for c in comps] == ["6", "7", "6"]
    # the truncated one stopped on a 6: a cut text's last number is not an answer (lnrl.verify.grade_answer)
    assert [c.correct for c in comps] == [True, False, False]
    assert [c.truncated for c in comps] == [False, False, True]
    for c in comps:
        assert set(DIMENSIONS) | {"wrongness", "absurdity"} <= set(c.profile)
    assert comps[0].profile["answer_mismatch"] == 0.0 and comps[1].profile["answer_mismatch"] == 1.0
    assert comps[1].profile["arithmetic_error"] == 1.0  # its one step, 2 + 4 = 7, is wrong
    assert comps[2].profile["degeneracy"] == 1.0        # truncated


def sorted_lines(path) -> list[str]:
    return sorted(path.read_text().splitlines())


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, model, tok):
    """5 questions in shards of 2: stop after 1 shard, then after 1 more, then finish; the merged
    file is byte-identical to an uninterrupted run's (shards depend on the question list only)."""
    exs = questions(5)
    kw = dict(k=3, temperature=1.0, top_p=0.95, max_new_tokens=6, seed=7, batch_size=6, shard_size=2,
              provenance={"model": "tiny", "source": "toy"}, progress=False)
    full = sample_to_dir(model, tok, exs, tmp_path / "full", **kw)
    assert len(full) == 5

    part = tmp_path / "part"
    assert sample_to_dir(model, tok, exs, part, max_shards=1, **kw) is None
    assert sorted(p.name for p in (part / "shards").iterdir()) == ["shard-00000.jsonl"]
    assert not (part / "groups.jsonl").exists()
    assert sample_to_dir(model, tok, exs, part, max_shards=1, **kw) is None
    assert len(list((part / "shards").glob("*.jsonl"))) == 2
    resumed = sample_to_dir(model, tok, exs, part, **kw)
    assert [g.id for g in resumed] == [e.id for e in exs]  # no record lost or duplicated
    assert sorted_lines(part / "groups.jsonl") == sorted_lines(tmp_path / "full" / "groups.jsonl")
    for name in ("shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"):
        assert (part / "shards" / name).read_bytes() == (tmp_path / "full" / "shards" / name).read_bytes()

    g = resumed[0]
    assert len(g.completions) + g.provenance["n_duplicates"] == 3
    assert all(c.truncated for c in g.completions)  # a random model never says <|im_end|> in 6 tokens
    prov = g.provenance
    assert (prov["k"], prov["temperature"], prov["top_p"], prov["max_new_tokens"], prov["seed"]) == (3, 1.0, 0.95, 6, 7)
    assert prov["model"] == "tiny" and prov["source"] == "toy" and prov["verifier_version"] == MathVerifier().version
    stats = json.loads((part / "stats.json").read_text())
    assert stats["questions"] == 5 and stats["completions"] == sum(len(g.completions) for g in resumed)
    assert stats["truncated_rate"] == 1.0


def test_another_seed_gives_other_samples_and_changed_settings_are_refused(tmp_path, model, tok):
    exs = questions(2)
    kw = dict(k=2, max_new_tokens=5, batch_size=4, shard_size=2, progress=False)
    a = sample_to_dir(model, tok, exs, tmp_path / "a", seed=0, **kw)
    b = sample_to_dir(model, tok, exs, tmp_path / "b", seed=1, **kw)
    assert [c.text for c in a[0].completions] != [c.text for c in b[0].completions]
    with pytest.raises(ValueError, match="other settings"):
        sample_to_dir(model, tok, exs, tmp_path / "a", seed=1, **kw)


def test_load_policy_from_lightning_checkpoint(tmp_path, tok):
    """A checkpoint as LnrlModule writes it: weights under `model.`, the model config under lnrl_model_cfg."""
    trained = load_model(TINY, tok)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "lnrl_model_cfg": TINY}, ckpt)
    loaded, _, name = load_policy({"source": "embedded"}, str(ckpt))  # the checkpoint's config wins
    for (k, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert name.startswith("tiny-llama@")
    torch.save({"state_dict": {"model.nope": torch.zeros(1)}, "lnrl_model_cfg": TINY}, ckpt)
    with pytest.raises(ValueError, match="do not fit"):
        load_policy({}, str(ckpt))


def test_hydra_app_writes_groups_with_provenance(tmp_path):
    cfg = compose_cfg(["model=tiny", "data.source.n_train=4", "data.source.n_eval=2", "n_questions=3", "k=2",
                       "max_new_tokens=4", "shard_size=2", "split=eval"], tmp_path, config_name="sample")
    groups = sample(cfg)
    assert len(groups) == 2  # the eval split holds 2 questions
    on_disk = read_groups(tmp_path / "groups.jsonl")
    assert [g.id for g in on_disk] == [g.id for g in groups]
    prov = on_disk[0].provenance
    assert prov["source"] == "gsm_symbolic" and prov["split"] == "eval" and prov["checkpoint"] is None
    assert prov["model"] == "tiny-llama" and prov["k"] == 2 and prov["max_new_tokens"] == 4
    assert on_disk[0].gold_solution.rstrip().endswith(f"#### {on_disk[0].answer}")
