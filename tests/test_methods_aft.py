"""AFT on the group module: one concatenated forward for members and gold rows, the NLL term,
single-sided groups, training.

    loss = L_align(s; groups) + sft_weight * NLL(gold CoT tokens)

with NLL = -sum logp(gold tokens) / #gold tokens (token-weighted, as VFT) and L_align the `aft` loss
of the registry on the members' mean log-likelihoods.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lnrl.data import LnrlDataModule
from lnrl.losses import build_loss
from lnrl.methods import AFTModule, GroupModule
from lnrl.methods.groups import cat_rows
from lnrl.models import load_tokenizer
from lnrl.scoring import sequence_logps

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "groups_tiny.jsonl"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
MAX_LENGTH = 160
AFT = {"name": "aft", "constraint": "boundary", "boundary": 0.5, "normalize": "mean"}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def datamodule(tok, path, batch_size=2) -> LnrlDataModule:
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "seed": 0, "n_train": 2, "n_eval": 2}, kind="groups",
                        prefs_path=str(path), max_length=MAX_LENGTH, batch_size=batch_size, tokenizer=tok)
    dm.setup("fit")
    return dm


def batch_with(tok, path, want, batch_size=2) -> dict:
    """The first training batch satisfying `want` (the loader's order is seeded, so this is deterministic)."""
    return next(b for b in datamodule(tok, path, batch_size).train_dataloader() if want(b))


def module(tok, loss=AFT, **kw) -> GroupModule:
    m = GroupModule(model=TINY, loss=loss, optim=ADAMW, tokenizer=tok, **kw)
    m.configure_model()
    return m


def mixed(b) -> bool:
    """Some group of the batch has both a correct and an incorrect completion."""
    return any(b["is_positive"][b["group_ids"] == g].unique().numel() == 2 for g in b["group_ids"].unique())


def test_cat_rows_pads_right_and_keeps_rows():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]]),
         "completion_mask": torch.tensor([[0, 1, 1]])}
    b = {"input_ids": torch.tensor([[8, 9], [3, 2]]), "attention_mask": torch.tensor([[1, 1], [1, 0]]),
         "completion_mask": torch.tensor([[0, 1], [0, 0]])}
    out = cat_rows(a, b, pad_id=2)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 2], [3, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert out["completion_mask"].tolist() == [[0, 1, 1], [0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_one_forward_equals_separate_forwards(tok, sft_weight):
    """Members and gold rows padded into one forward give the same loss as two separate forwards."""
    batch = batch_with(tok, FIXTURE, mixed)
    m = module(tok, sft_weight=sft_weight)
    loss, terms, align, _ = m.objective(batch)
    with torch.no_grad():
        logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
        expected = build_loss(**AFT)(scores=s, group_ids=batch["group_ids"], is_positive=batch["is_positive"]).loss
        g_logits = m.model(input_ids=batch["gold_input_ids"], attention_mask=batch["gold_attention_mask"]).logits
        g = sequence_logps(g_logits, batch["gold_input_ids"], batch["gold_completion_mask"])
        nll = -g.logp_sum.sum() / g.n_tokens.sum()
    assert align.loss.item() == pytest.approx(expected.item(), abs=1e-5) and expected.item() > 0
    assert loss.item() == pytest.approx(expected.item() + sft_weight * nll.item(), abs=1e-5)
    assert list(terms) == (["aft", "nll"] if sft_weight > 0 else ["aft"])  # logged as train/aft, train/nll
    if sft_weight > 0:
        assert terms["nll"].item() == pytest.approx(nll.item(), abs=1e-5)
    for key in ("scores/positive", "scores/negative", "aft/boundary", "aft/below_boundary", "aft/skipped_groups"):
        assert math.isfinite(align.metrics[key].item())


def test_single_sided_groups_give_finite_loss_and_grads(tok, tmp_path):
    """A group with only positives and one with only negatives: no alignment term (skipped), no NaN anywhere."""
    lines = [json.loads(l) for l in FIXTURE.read_text().splitlines()]
    one_sided = [g for g in lines if len({c["correct"] for c in g["completions"]}) == 1]
    assert sorted(all(c["correct"] for c in g["completions"]) for g in one_sided) == [False, True]
    path = tmp_path / "one_sided.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in one_sided))
    batch = next(iter(datamodule(tok, path).train_dataloader()))
    m = module(tok, sft_weight=1.0)
    loss, terms, align, _ = m.objective(batch)
    loss.backward()
    assert align.metrics["aft/skipped_groups"].item() == 2.0
    assert align.loss.item() == 0.0 and loss.item() == pytest.approx(terms["nll"].item())
    assert all(torch.isfinite(p.grad).all() for p in m.model.parameters() if p.grad is not None)
    # alignment only: a zero that is still in the graph, so backward works and grads are zero
    m0 = module(tok, sft_weight=0.0)
    loss0 = m0.objective(batch).loss
    loss0.backward()
    assert loss0.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in m0.model.parameters())


def test_loss_decreases_and_separates_scores(tok):
    """10 AdamW steps (lr 1e-3) on one group: total loss falls every step; positives pull away from negatives."""
    batch = batch_with(tok, FIXTURE, mixed, batch_size=1)
    m = module(tok, sft_weight=1.0)
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-3)
    losses, gaps = [], []
    for _ in range(10):
        loss, _, align, _ = m.objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        gaps.append((align.metrics["scores/positive"] - align.metrics["scores/negative"]).item())
    assert all(math.isfinite(x) for x in losses)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.5
    assert gaps[-1] > gaps[0] + 0.1


def test_use_ranks_reads_ranks_and_requires_them(tok, tmp_path):
    """With ranks the loss ranks every level pair; a file without ranks is refused with a clear error."""
    batch = batch_with(tok, FIXTURE, mixed)
    assert (batch["ranks"] >= 1).all()
    m = module(tok, sft_weight=0.0, use_ranks=True)
    loss = m.objective(batch).loss
    with torch.no_grad():
        logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
        expected = build_loss(**AFT)(scores=s, group_ids=batch["group_ids"], ranks=batch["ranks"]).loss
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)

    unranked = tmp_path / "unranked.jsonl"
    unranked.write_text(FIXTURE.read_text().replace('"rank":', '"_rank":'))
    batch = next(iter(datamodule(tok, unranked).train_dataloader()))
    with pytest.raises(ValueError, match="use_ranks=true but some completions have no 'rank'"):
        m.objective(batch)


def test_sft_weight_is_the_nll_term(tok):
    """sft_weight is shorthand for extra_losses.nll.weight: the same terms; both at once, or < 0, is refused.
    AFTModule is the same class (kept for configs that name it)."""
    assert AFTModule is GroupModule
    a, b = module(tok, sft_weight=0.7), module(tok, extra_losses={"nll": {"weight": 0.7}})
    terms = [("aft", 1.0), ("nll", 0.7)]
    assert [(t.name, t.weight) for t in a.terms] == [(t.name, t.weight) for t in b.terms] == terms
    with pytest.raises(ValueError, match="sft_weight"):
        GroupModule(model=TINY, loss=AFT, optim=ADAMW, tokenizer=tok, sft_weight=-1.0)
    with pytest.raises(ValueError, match="both set the NLL term"):
        GroupModule(model=TINY, loss=AFT, optim=ADAMW, tokenizer=tok, sft_weight=1.0, extra_losses={"nll": {}})
    c = module(tok, sft_weight=0.0, extra_losses={"nll": {"weight": 0.5, "reduction": "sequence"}})  # kto.yaml + nll
    assert [(t.name, t.weight, t.fn.reduction) for t in c.terms[1:]] == [("nll", 0.5, "sequence")]
