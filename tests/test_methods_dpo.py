"""DPOModule / WeightedDPOModule on the fixture groups with the tiny model (no Trainer: the step math).

Reference scores are computed with the tiny model itself by lnrl-refscores, so at step 0
policy == reference and every pairwise log-ratio is 0:

    h = [s(y_c) - s_ref(y_c)] - [s(y_r) - s_ref(y_r)] = 0  =>  DPO loss = -log sigmoid(0) = ln 2, any beta.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lnrl.data import LnrlDataModule, PairCollator, encode, make_pairs, read_groups
from lnrl.losses import registry
from lnrl.methods import AFTModule, DPOModule, WeightedDPOModule
from lnrl.models import load_model, load_tokenizer
from lnrl.refscores import score_file
from lnrl.scoring import sequence_logps

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "groups_tiny.jsonl"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
MAX_LENGTH = 160  # longer than every fixture row: nothing is truncated
LN2 = math.log(2.0)
DPO_SUM = {"name": "dpo", "beta": 0.1, "normalize": "sum"}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def scored(tok, tmp_path_factory) -> Path:
    """The fixture groups with refs from the tiny model (what lnrl-refscores model=tiny writes)."""
    path = tmp_path_factory.mktemp("refs") / "groups.jsonl"
    shutil.copy(FIXTURE, path)
    score_file(load_model(TINY, tok), tok, path, ref_model="tiny", max_length=MAX_LENGTH, progress=False)
    return path


def datamodule(tok, path, batch_size=4, weight_field=None) -> LnrlDataModule:
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "seed": 0, "n_train": 2, "n_eval": 2}, kind="pairs",
                        prefs_path=str(path), weight_field=weight_field, max_length=MAX_LENGTH,
                        batch_size=batch_size, tokenizer=tok)
    dm.setup("fit")
    return dm


def first_batch(dm) -> dict:
    return next(iter(dm.train_dataloader()))


def module(tok, loss=DPO_SUM, cls=DPOModule, **kw):
    m = cls(model=TINY, loss=loss, optim={"lr": 1e-3}, scheduler={}, tokenizer=tok, **kw)
    m.configure_model()
    return m


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Move the policy away from the reference so log-ratios are no longer 0."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("loss", [DPO_SUM, {"name": "dpo", "beta": 0.5, "normalize": "mean"},
                                  {"name": "dpo", "beta": 2.0, "normalize": "sum"}])
def test_policy_equals_reference_gives_ln2(tok, scored, loss):
    out = module(tok, loss).pair_loss(first_batch(datamodule(tok, scored)))
    assert out.loss.item() == pytest.approx(LN2, abs=1e-4)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.0, abs=1e-3)


def test_cached_reference_equals_live_reference(tok, scored):
    """Cached refs (refscores) and a live frozen copy give the same loss and rewards on the same batch."""
    batch = first_batch(datamodule(tok, scored))
    cached, live = module(tok), module(tok, reference="live")
    perturb(cached.model)
    live.model.load_state_dict(cached.model.state_dict())
    for loss in (DPO_SUM, {"name": "dpo", "beta": 0.5, "normalize": "mean"}, {"name": "ipo", "beta": 0.1}):
        cached.loss_fn = live.loss_fn = registry.build_loss(**loss)
        a, b = cached.pair_loss(batch), live.pair_loss(batch)
        assert abs(a.loss.item() - LN2) > 1e-3  # the policy really moved: the comparison is not ln2 == ln2
        assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-5)
        for key in ("rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert a.metrics[key].item() == pytest.approx(b.metrics[key].item(), abs=1e-4)


def test_live_reference_is_frozen_and_not_a_child(tok, scored):
    batch = first_batch(datamodule(tok, scored))
    m = module(tok, reference="live")
    ref = m.ref_model
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(not k.startswith("_ref") and "ref_model" not in k for k in m.state_dict())  # not checkpointed
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in m.model.parameters())
    before = m.live_reference(batch).logp_sum.clone()
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-2)
    m.pair_loss(batch).loss.backward()
    opt.step()
    assert all(p.grad is None for p in ref.parameters())
    assert torch.equal(m.live_reference(batch).logp_sum, before)
    assert not torch.allclose(m.score(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
                              .logp_sum, before)


def test_reference_free_loss_builds_no_reference(tok):
    m = module(tok, {"name": "simpo"}, reference="live")
    assert m.ref_model is None and not m.needs_reference


@pytest.mark.parametrize("loss, below", [(DPO_SUM, 0.5 * LN2),
                                         ({"name": "dpo", "beta": 2.0, "normalize": "mean"}, 0.75 * LN2)])
def test_loss_decreases_on_one_batch(tok, scored, loss, below):
    """15 AdamW steps (lr 1e-3) on one fixed pair: starts at ln 2, falls steadily, chosen ranked first."""
    batch = first_batch(datamodule(tok, scored, batch_size=1))
    m = module(tok, loss)
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = m.pair_loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(LN2, abs=1e-4)
    assert losses[-1] < below and losses[-1] < min(losses[:10])
    assert out.metrics["rewards/accuracies"].item() == 1.0


def test_weighted_dpo_weighs_pairs_by_rejected_wrongness(tok, scored):
    """L = sum_i w_i l_i / sum_i w_i with l_i = -log sigmoid(beta h_i) and
    w_i = wrongness(rejected_i) * n / sum_j wrongness(rejected_j) (mean 1 over the data set)."""
    groups = {g.id: g for g in read_groups(scored)}
    pairs = make_pairs(list(groups.values()), gold_as_chosen=True, weight_field="profile.wrongness")
    raw = [groups[p.meta["group_id"]].completions[p.meta["rejected"]].profile["wrongness"] for p in pairs]
    w = torch.tensor(raw) * len(raw) / sum(raw)
    assert torch.allclose(torch.tensor([p.weight for p in pairs]), w) and len(set(raw)) > 1
    items = [{"chosen": encode(tok, p.question, p.chosen, MAX_LENGTH),
              "rejected": encode(tok, p.question, p.rejected, MAX_LENGTH),
              "ref_chosen": p.ref_chosen, "ref_rejected": p.ref_rejected, "weight": p.weight} for p in pairs[:6]]
    batch = PairCollator(tok.pad_token_id)(items)

    weighted = module(tok, cls=WeightedDPOModule)
    perturb(weighted.model)
    plain = module(tok)
    plain.model.load_state_dict(weighted.model.state_dict())

    with torch.no_grad():  # by hand: one forward, summed log-probs, the DPO log-ratio margin per pair
        logits = weighted.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = sequence_logps(logits, batch["input_ids"], batch["completion_mask"]).logp_sum - batch["ref_logp_sum"]
        h = s[:6] - s[6:]
        l = -F.logsigmoid(0.1 * h)
        wb = batch["weights"]
    expected = (wb * l).sum() / wb.sum()
    assert weighted.pair_loss(batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert plain.pair_loss(batch).loss.item() == pytest.approx(l.mean().item(), abs=1e-5)
    assert abs(expected.item() - l.mean().item()) > 1e-4  # the weights matter on this batch


def test_missing_refs_error_says_run_refscores(tok, tmp_path):
    """Without a trainer the message still says what to do; train-level test names the file (test_methods_train)."""
    stripped = tmp_path / "norefs.jsonl"
    stripped.write_text("".join(l.replace('"ref"', '"_ref"').replace('"gold_ref"', '"_gold_ref"')
                                for l in FIXTURE.read_text().splitlines(keepends=True)))
    batch = first_batch(datamodule(tok, stripped))
    assert "ref_logp_sum" not in batch
    with pytest.raises(ValueError, match="run lnrl-refscores first"):
        module(tok).pair_loss(batch)
    out = module(tok, {"name": "simpo"}).pair_loss(batch)  # reference-free: fine without refs
    assert math.isfinite(out.loss.item())


def test_methods_refuse_losses_they_cannot_feed(tok, monkeypatch):
    with pytest.raises(ValueError, match="DPOModule cannot train with loss 'aft'"):
        module(tok, {"name": "aft"})
    with pytest.raises(ValueError, match="AFTModule cannot train with loss 'dpo'"):
        AFTModule(model=TINY, loss=DPO_SUM, optim={}, scheduler={}, tokenizer=tok)
    with pytest.raises(ValueError, match="cannot train with loss 'nll'"):
        module(tok, {"name": "nll"}, cls=WeightedDPOModule)
    with pytest.raises(ValueError, match="method.reference='frozen'"):
        module(tok, reference="frozen")
    # a pairwise loss that ignores weights cannot stand in for weighted DPO
    spec = registry.get_spec("simpo")
    monkeypatch.setitem(registry._REGISTRY, "simpo_unweighted",
                        registry.LossSpec(**{**spec.__dict__, "name": "simpo_unweighted", "uses_weights": False}))
    with pytest.raises(ValueError, match="ignores per-pair weights"):
        module(tok, {"name": "simpo_unweighted"}, cls=WeightedDPOModule)
    assert module(tok, {"name": "simpo_unweighted"}).loss_fn is not None
