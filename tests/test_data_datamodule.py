"""LnrlDataModule with the tiny tokenizer: each kind, stats, seeded data order."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

import lnrl
from lnrl.data import DataError, LnrlDataModule, SFTCollator, encode_prompt, read_groups
from lnrl.data.resumable import EpochShuffle
from lnrl.models import load_tokenizer

GROUPS = Path(lnrl.__file__).parent / "fixtures" / "groups_tiny.jsonl"
SOURCE = {"name": "gsm_symbolic", "seed": 0, "n_train": 12, "n_eval": 5}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def make(tok, **kw) -> LnrlDataModule:
    dm = LnrlDataModule(source=dict(SOURCE), tokenizer=tok, **kw)
    dm.setup("fit")
    return dm


def test_sft(tok):
    dm = make(tok, batch_size=4, eval_batch_size=3)
    assert len(dm.train_examples) == 12 and len(dm.eval_examples) == 5
    assert {e.meta["template"] for e in dm.eval_examples} <= set(dm.split_info["eval_templates"])
    assert not {e.meta["template"] for e in dm.train_examples} & set(dm.split_info["eval_templates"])
    assert dm.stats["train_rows"] == 12 and dm.stats["val_rows"] == 5 and dm.stats["source_skipped"] == 0
    batches = list(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 4]
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "completion_mask", "labels"}
    # every row: its completion = the gold CoT of some train example + eos
    sols = {e.solution for e in dm.train_examples}
    for row, mask, attn in zip(b["input_ids"], b["completion_mask"], b["attention_mask"]):
        assert tok.decode(row[mask == 1]) in {s + "<|im_end|>" for s in sols}
        assert tok.decode(row[(attn == 1) & (mask == 0)]).endswith("<|im_start|>assistant\n")
    val = list(dm.val_dataloader())
    assert [v["input_ids"].shape[0] for v in val] == [3, 2]
    first_val = val[0]["input_ids"][0][val[0]["attention_mask"][0] == 1].tolist()
    assert first_val[: len(encode_prompt(tok, dm.eval_examples[0].question))] == encode_prompt(
        tok, dm.eval_examples[0].question)
    split = dm._split
    dm.setup("validate")  # idempotent
    assert dm._split is split


def test_setup_needs_a_tokenizer_and_valid_kind():
    with pytest.raises(ValueError, match="needs data.prefs_path"):
        LnrlDataModule(source=SOURCE, kind="pairs")
    with pytest.raises(ValueError, match="data.kind='dpo'"):
        LnrlDataModule(source=SOURCE, kind="dpo")
    dm = LnrlDataModule(source=SOURCE)
    with pytest.raises(RuntimeError, match="tokenizer"):
        dm.setup()
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.eval_examples


def test_pairs(tok):
    dm = make(tok, kind="pairs", prefs_path=str(GROUPS), batch_size=5, weight_field="profile.wrongness",
              gold_as_chosen=True)
    assert dm.stats["pairs"] == 18 and dm.stats["pairs_gold_chosen"] == 4 and dm.stats["train_rows"] == 18
    assert dm.stats["prefs_in_eval"] == 0
    batches = list(dm.train_dataloader())
    assert [b["weights"].shape[0] for b in batches] == [5, 5, 5, 3]
    b = batches[0]
    assert b["input_ids"].shape[0] == 10 and b["ref_logp_sum"].shape == (10,)
    # cached ref token counts match what the policy is scored on (the fixture was built this way)
    assert torch.equal(b["ref_n_tokens"], b["completion_mask"].sum(1))
    weights = torch.cat([b["weights"] for b in batches])
    assert weights.mean().item() == pytest.approx(1.0)


def test_groups(tok):
    dm = make(tok, kind="groups", prefs_path=str(GROUPS), batch_size=4)
    assert dm.stats["groups_read"] == 6 and dm.stats["groups_all_correct"] == 1
    assert dm.stats["groups_all_incorrect"] == 1 and dm.stats["train_rows"] == 6
    b = next(iter(dm.train_dataloader()))
    assert b["input_ids"].shape[0] == 16 and b["gold_input_ids"].shape[0] == 4
    assert torch.equal(b["group_ids"], torch.arange(4).repeat_interleave(4))
    assert torch.equal(b["ref_n_tokens"], b["completion_mask"].sum(1))
    assert sorted(b["ranks"][:4].tolist()) == [1, 2, 3, 4]
    # the positives of each group are exactly its correct completions
    by_gold = {g.gold_solution + "<|im_end|>": g for g in read_groups(GROUPS)}
    for i in range(4):
        row, mask = b["gold_input_ids"][i], b["gold_completion_mask"][i]
        g = by_gold[tok.decode(row[mask == 1])]
        assert b["is_positive"][b["group_ids"] == i].tolist() == [c.correct for c in g.completions]


def test_stale_refs_raise_or_are_dropped(tok):
    # max_length cuts the longer completions, so their cached n_tokens no longer match
    prompt_len = max(len(encode_prompt(tok, g.question)) for g in read_groups(GROUPS))
    kw = dict(kind="pairs", prefs_path=str(GROUPS), max_length=prompt_len + 30, gold_as_chosen=True)
    with pytest.raises(DataError, match=r"groups_tiny.jsonl: pair .*field 'ref.n_tokens': cached \d+ tokens"):
        make(tok, **kw)
    dm = make(tok, on_error="skip", **kw)
    assert dm.stats["train_overlong_truncated"] > 0 and dm.stats["ref_mismatch_dropped"] > 0
    assert dm.stats["train_rows"] == 18 - dm.stats["ref_mismatch_dropped"]


def test_overlong_drop_counts(tok):
    lengths = sorted(len(tok(e.solution + "<|im_end|>").input_ids) + len(encode_prompt(tok, e.question))
                     for e in make(tok).train_examples)
    cut = lengths[6]  # rows longer than the 7th shortest are dropped
    dm = make(tok, max_length=cut, overlong="drop")
    n_long = sum(n > cut for n in lengths)
    assert dm.stats["train_overlong_dropped"] == n_long and dm.stats["train_rows"] == 12 - n_long


def test_prefs_in_eval_is_counted(tok, tmp_path):
    dm = make(tok)
    lines = [json.loads(x) for x in GROUPS.read_text().splitlines()]
    lines[0]["question"] = dm.eval_examples[0].question
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert make(tok, kind="groups", prefs_path=str(path)).stats["prefs_in_eval"] == 1


def test_epoch_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffle(10, seed=3), EpochShuffle(10, seed=3)
    first = list(a)
    assert sorted(first) == list(range(10)) and list(b) == first
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(5)
    b.set_epoch(1)
    assert list(b) == second  # a resumed run at epoch 1 sees the same order
    assert list(EpochShuffle(10, seed=4)) != first


def test_lightning_sets_the_epoch(tok):
    """Fit two epochs of one 12-row batch each: epoch e's batch is the rows in EpochShuffle(seed, e) order."""
    dm = make(tok, batch_size=12, seed=7)
    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, _):
            seen.append(batch["input_ids"].clone())
            return self.w ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(Probe(), datamodule=dm)
    assert len(seen) == 2
    for epoch, batch in enumerate(seen):
        sampler = EpochShuffle(12, 7)
        sampler.set_epoch(epoch)
        expected = SFTCollator(tok.pad_token_id)([dm._train[i] for i in sampler])
        assert torch.equal(batch, expected["input_ids"])
    assert not torch.equal(seen[0], seen[1])


def test_resume_mid_epoch_continues_the_data_order(tok, tmp_path):
    """3 batches per epoch, 2 epochs. Stop after step 4 (mid epoch 1), resume from last.ckpt: the batches
    of the two runs together equal the uninterrupted run's six, with none replayed or skipped."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    seen: list = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, _):
            seen.append(batch["input_ids"].tolist())
            return self.w ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(ckpt_path=None, **kw):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, **kw)
        trainer.fit(Probe(), datamodule=make(tok, batch_size=4, seed=3), ckpt_path=ckpt_path)
        return trainer

    fit(max_epochs=2, enable_checkpointing=False)
    full, seen[:] = list(seen), []
    fit(max_steps=4, callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)])
    resumed = fit(max_epochs=2, enable_checkpointing=False, ckpt_path=str(tmp_path / "last.ckpt"))
    assert len(full) == 6 and seen == full and resumed.global_step == 6


def test_gold_is_an_explicit_choice(tok):
    """Off by default: the all-incorrect group t50 (4 wrong samples) yields no pair and no positive; on, its
    gold CoT becomes the chosen side of 4 pairs (pairs) or a positive member with its gold_ref (groups)."""
    off = make(tok, kind="pairs", prefs_path=str(GROUPS))
    on = make(tok, kind="pairs", prefs_path=str(GROUPS), gold_as_chosen=True)
    assert off.stats["pairs_gold_chosen"] == 0 and on.stats["pairs"] - off.stats["pairs"] == 4
    groups_off = make(tok, kind="groups", prefs_path=str(GROUPS))
    groups_on = make(tok, kind="groups", prefs_path=str(GROUPS), gold_as_chosen=True)
    assert groups_off.stats["groups_gold_positive"] == 0 and groups_on.stats["groups_gold_positive"] == 1
    t50 = next(g for g in read_groups(GROUPS) if g.n_correct == 0)
    item = next(it for it in groups_on._train if len(it["members"]) == len(t50.completions) + 1)
    assert item["is_positive"] == [False] * 4 + [True] and item["ranks"][-1] == 1
    assert item["refs"][-1] == t50.gold_ref
    assert tok.decode(item["members"][-1]["input_ids"][-sum(item["members"][-1]["completion_mask"]):]) == (
        t50.gold_solution + "<|im_end|>")


def test_truncated_completion_has_no_eos(tok):
    """The fixture's run-on sample (truncated) is encoded without <|im_end|>; its cached ref, computed the
    same way, covers exactly its tokens (no ref.n_tokens mismatch)."""
    dm = make(tok, kind="groups", prefs_path=str(GROUPS))
    g = next(g for g in read_groups(GROUPS) if any(c.truncated for c in g.completions))
    i = next(i for i, c in enumerate(g.completions) if c.truncated)
    item = next(it for it in dm._train if it["refs"][i] == g.completions[i].ref)
    row = item["members"][i]
    completion = row["input_ids"][-sum(row["completion_mask"]):]
    assert tok.decode(completion) == g.completions[i].text and tok.eos_token_id not in completion
    assert sum(row["completion_mask"]) == g.completions[i].ref[1]
