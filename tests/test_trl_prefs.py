"""Outside preference data in TRL's formats: parsing, lnrl's tokenization, cached refs, and DPO on it.

The end-to-end runs train with optim.lr=0, so the policy stays equal to its reference (live, or cached
by lnrl-refscores with the same tiny model) at every step, and every pairwise log-ratio is 0:

    h = [s(y_c) - s_ref(y_c)] - [s(y_r) - s_ref(y_r)] = 0  =>  DPO loss = -log sigmoid(0) = ln 2

for DPO summed (method=dpo) and length-averaged (method=dpo_avg) alike.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lnrl.data import DataError, LnrlDataModule, encode
from lnrl.data.trl_format import detect_format, encode_pref, parse_trl_row, read_trl_prefs
from lnrl.models import load_model, load_tokenizer
from lnrl.reference import score_trl_file

FIXTURES = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures"
STANDARD, CONVERSATIONAL, IMPLICIT = (FIXTURES / f"prefs_trl_{f}.jsonl" for f in ("standard", "conversational",
                                                                                   "implicit"))
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
LN2 = math.log(2.0)
Q = "What is 2 + 3?"
USER = {"role": "user", "content": Q}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("row,form,prompt,chosen,rejected", [
    ({"prompt": Q, "chosen": "#### 5", "rejected": "#### 6"}, "standard", (USER,), "#### 5", "#### 6"),
    ({"prompt": [USER], "chosen": [{"role": "assistant", "content": "#### 5"}],
      "rejected": [{"role": "assistant", "content": "#### 6"}]}, "conversational", (USER,), "#### 5", "#### 6"),
    ({"chosen": [USER, {"role": "assistant", "content": "2 + 3 = 5"}],
      "rejected": [USER, {"role": "assistant", "content": "2 + 3 = 6"}]},
     "conversational_implicit", (USER,), "2 + 3 = 5", "2 + 3 = 6"),
    # An explicit prompt that the conversations repeat at their head.
    ({"prompt": [USER], "chosen": [USER, {"role": "assistant", "content": "5"}],
      "rejected": [USER, {"role": "assistant", "content": "6"}]}, "conversational", (USER,), "5", "6"),
    # TRL's rule: a str prompt beside message lists is ignored; the prompt comes from the conversations.
    ({"prompt": Q, "chosen": [USER, {"role": "assistant", "content": "5"}],
      "rejected": [USER, {"role": "assistant", "content": "6"}]}, "conversational_implicit", (USER,), "5", "6"),
    # Standard implicit: the common prefix "What is 2 + 3? It is " is cut at its last space.
    ({"chosen": "What is 2 + 3? It is 5", "rejected": "What is 2 + 3? It is 6"},
     "standard_implicit", ({"role": "user", "content": "What is 2 + 3? It is"},), "5", "6"),
    ({"chosen": "What is 2 + 3? It is 15", "rejected": "What is 2 + 3? It is 16"},
     "standard_implicit", ({"role": "user", "content": "What is 2 + 3? It is"},), "15", "16"),
])
def test_each_form_gives_prompt_messages_and_assistant_texts(row, form, prompt, chosen, rejected):
    rec = parse_trl_row(row, "f.jsonl:1", "line 1")
    assert (rec.form, rec.prompt, rec.chosen, rec.rejected, rec.id) == (form, prompt, chosen, rejected, "line 1")


@pytest.mark.parametrize("row,message", [
    ({"prompt": Q, "rejected": "x"}, "f.jsonl:1: field 'chosen': missing"),
    ({"prompt": Q, "chosen": "x", "rejected": [{"role": "assistant", "content": "y"}]},
     "fields 'chosen'/'rejected': expected two strings or two message lists, got str and list"),
    ({"prompt": [USER], "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
      "rejected": [{"role": "assistant", "content": "c"}]},
     "field 'chosen': expected one assistant message (one completion per pair), got roles ['assistant', 'user']"),
    ({"prompt": [USER], "chosen": [{"role": "assistant", "content": None}],
      "rejected": [{"role": "assistant", "content": "c"}]}, "field 'chosen[0].content': expected str, got NoneType"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
     "no 'prompt' and no shared first message"),
    ({"chosen": "five", "rejected": "six"}, "no 'prompt' and no shared leading words"),
    ({"prompt": Q, "chosen": "  ", "rejected": "x"}, "field 'chosen': empty completion"),
    ({"prompt": [{"role": "system", "content": "s"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "field 'prompt': no user message"),
    ({"prompt": Q, "chosen": "a", "rejected": "b", "ref_chosen": {"logp_sum": 1.0, "n_tokens": 3}},
     "field 'ref_chosen.logp_sum': a log-probability sum must be finite and <= 0"),
])
def test_bad_rows_name_line_and_field(row, message):
    with pytest.raises(DataError, match="^f.jsonl:1: ") as err:
        parse_trl_row(row, "f.jsonl:1", "line 1")
    assert message in str(err.value)


def test_weights_are_checked_and_scaled_to_mean_one(tmp_path):
    """The standard fixture's weights 1, 2, 0.5, 1.5 (mean 1.25) scale to 0.8, 1.6, 0.4, 1.2."""
    recs = read_trl_prefs(STANDARD, weight_field="weight")
    assert [r.weight for r in recs] == pytest.approx([0.8, 1.6, 0.4, 1.2])
    assert [r.weight for r in read_trl_prefs(STANDARD)] == [1.0] * 4
    bad = write(tmp_path / "w.jsonl", [{"prompt": Q, "chosen": "a", "rejected": "b", "weight": -1}])
    with pytest.raises(DataError, match=r"w.jsonl:1: field 'weight': expected a finite number >= 0, got -1"):
        read_trl_prefs(bad, weight_field="weight")
    with pytest.raises(DataError, match=r"w.jsonl:1: field 'score': missing \(data.weight_field"):
        read_trl_prefs(bad, weight_field="score")
    stats: dict = {}
    write(tmp_path / "skip.jsonl", [{"prompt": Q, "chosen": "a", "rejected": "b"}, {"prompt": Q}])
    assert len(read_trl_prefs(tmp_path / "skip.jsonl", "skip", stats)) == 1 and stats["skipped"] == 1


def test_format_detection(tmp_path):
    assert [detect_format(p) for p in (STANDARD, CONVERSATIONAL, IMPLICIT)] == ["trl"] * 3
    assert detect_format(FIXTURES / "groups_tiny.jsonl") == "lnrl"
    assert detect_format("trl-lib/ultrafeedback_binarized") == "trl"  # hub ids are outside data
    assert detect_format(tmp_path / "missing.jsonl") == "lnrl"  # left to the group reader's own error
    assert detect_format(FIXTURES / "groups_tiny.jsonl", "trl") == "trl"
    with pytest.raises(ValueError, match="data.prefs_format='dpo'; expected one of"):
        detect_format(STANDARD, "dpo")


def test_hub_id_offline_names_the_dataset_and_split(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"trl-lib/ultrafeedback_binarized: could not load split 'test' from the hub"):
        read_trl_prefs("trl-lib/ultrafeedback_binarized:test")


# ----------------------------------------------------------------------------- tokenization


def test_standard_rows_encode_exactly_like_lnrl_questions(tok):
    for rec in read_trl_prefs(STANDARD) + [r for r in read_trl_prefs(IMPLICIT) if r.form == "standard_implicit"]:
        chosen, rejected = encode_pref(tok, rec, 256, system_prompt="Be brief.")
        assert chosen == encode(tok, rec.question, rec.chosen, 256, system_prompt="Be brief.")
        assert rejected == encode(tok, rec.question, rec.rejected, 256, system_prompt="Be brief.")


def test_conversational_prompt_is_templated_with_its_own_system_turn(tok):
    """Prompt = apply_chat_template(messages, add_generation_prompt=True); completion = content + eos.
    data.system_prompt is added only to a prompt without a system message."""
    recs = read_trl_prefs(CONVERSATIONAL)
    own = recs[1]
    assert own.prompt[0]["role"] == "system"
    for rec, system, expect_msgs in [
        (own, "Ignored.", list(own.prompt)),
        (recs[0], "Be brief.", [{"role": "system", "content": "Be brief."}, *recs[0].prompt]),
    ]:
        text = tok.apply_chat_template(expect_msgs, add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False).input_ids
        completion = tok(rec.chosen + tok.eos_token, add_special_tokens=False).input_ids
        chosen, _ = encode_pref(tok, rec, 512, system_prompt=system)
        assert chosen["input_ids"] == prompt + completion
        assert chosen["completion_mask"] == [0] * len(prompt) + [1] * len(completion)
        assert tok.decode(completion).endswith("<|im_end|>")


def test_datamodule_serves_trl_pairs_and_refuses_groups(tok):
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "n_train": 2, "n_eval": 2}, kind="pairs",
                        prefs_path=str(STANDARD), weight_field="weight", pairing="hard_negative", max_length=256,
                        batch_size=4, tokenizer=tok)
    dm.setup()
    assert dm.stats["pairs"] == dm.stats["train_rows"] == 4 and dm.stats["prefs_forms"] == {"standard": 4}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and "ref_logp_sum" not in batch
    assert sorted(batch["weights"].tolist()) == pytest.approx([0.4, 0.8, 1.2, 1.6])
    groups = LnrlDataModule(source={"name": "gsm_symbolic", "n_train": 2, "n_eval": 2}, kind="groups",
                            prefs_path=str(CONVERSATIONAL), tokenizer=tok)
    with pytest.raises(DataError, match="TRL preference rows .* make pairs, but the method trains on 'groups'"):
        groups.setup()


# ----------------------------------------------------------------------------- cached reference scores


@torch.no_grad()
def naive(model, row: dict) -> tuple[float, int]:
    """sum_t log softmax(z_{t-1})[x_t] over the completion of one unpadded row."""
    ids = torch.tensor([row["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    mask = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
    return float(logp[mask].sum()), int(mask.sum())


def test_refscores_on_trl_rows_equal_unbatched_scores_and_resume(tok, tmp_path):
    model = load_model(TINY, tok)
    out = tmp_path / "scored.jsonl"
    counts = score_trl_file(model, tok, str(CONVERSATIONAL), out, ref_model="tiny", batch_size=4, max_length=256,
                            chunk_size=2, progress=False)
    assert counts == {"rows": 3, "scored": 3, "skipped": 0}
    for before, after, rec in zip(rows(CONVERSATIONAL), rows(out), read_trl_prefs(out)):
        assert {k: after[k] for k in before} == before  # the row's own fields are kept
        assert after["ref_provenance"]["ref_model"] == "tiny"
        for row, ref in zip(encode_pref(tok, rec, 256), (rec.ref_chosen, rec.ref_rejected)):
            lp, n = naive(model, row)
            assert ref[1] == n and ref[0] == pytest.approx(lp, abs=1e-4)
    again = score_trl_file(model, tok, str(CONVERSATIONAL), out, ref_model="tiny", max_length=256, progress=False)
    assert again == {"rows": 3, "scored": 0, "skipped": 3}
    with pytest.raises(ValueError, match="a hub dataset cannot be overwritten; give output="):
        score_trl_file(model, tok, "trl-lib/ultrafeedback_binarized", ref_model="tiny", progress=False)


# ----------------------------------------------------------------------------- end to end (lnrl-train)


def run(tiny_cfg, extra: list[str]) -> dict:
    from lnrl.apps.train import train

    return train(tiny_cfg(["experiment=fixtures", "eval.enabled=false", "optim.lr=0.0", "trainer.max_steps=2",
                           *extra]))


@pytest.mark.parametrize("method", ["dpo", "dpo_avg"])
def test_trl_file_trains_with_a_live_reference(tiny_cfg, method):
    for path in (STANDARD, CONVERSATIONAL, IMPLICIT):
        metrics = run(tiny_cfg, [f"method={method}", f"data.prefs_path={path}", "method.reference=live"])
        assert metrics["global_step"] == 2 and metrics["train/loss"] == pytest.approx(LN2, abs=1e-5)


@pytest.mark.parametrize("method", ["dpo", "dpo_avg"])
def test_trl_file_trains_with_refs_cached_by_lnrl_refscores(tiny_cfg, tmp_path, method):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lnrl.apps.refscores import refscores
    from conftest import CONF_DIR

    path = tmp_path / "prefs.jsonl"
    shutil.copy(STANDARD, path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("refscores", overrides=["model=tiny", f"input={path}", "data.max_length=256", "device=cpu"])
    assert refscores(cfg) == {"rows": 4, "scored": 4, "skipped": 0}
    metrics = run(tiny_cfg, [f"method={method}", f"data.prefs_path={path}", "method.reference=cached"])
    assert metrics["train/loss"] == pytest.approx(LN2, abs=1e-5)
    # Weighted DPO on the same file, weights from its `weight` column: runs, and logs finite values.
    metrics = run(tiny_cfg, ["method=wdpo", f"data.prefs_path={path}", "data.weight_field=weight", "optim.lr=1e-3"])
    assert math.isfinite(metrics["train/loss"])
