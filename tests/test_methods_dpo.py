"""DPO, weighted DPO and RPO on the pair module, fixture groups, tiny model (no Trainer: the step math).

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
from lnrl.methods import DPOModule, GroupModule, PairModule, WeightedDPOModule
from lnrl.models import load_model, load_tokenizer
from lnrl.reference import score_file
from lnrl.scoring import sequence_logps

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "groups_tiny.jsonl"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
MAX_LENGTH = 160  # longer than every fixture row: nothing is truncated
LN2 = math.log(2.0)
DPO_SUM = {"name": "dpo", "beta": 0.1, "normalize": "sum"}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


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
                        batch_size=batch_size, tokenizer=tok, gold_as_chosen=True)
    dm.setup("fit")
    return dm


def first_batch(dm) -> dict:
    return next(iter(dm.train_dataloader()))


def module(tok, loss=DPO_SUM, **kw) -> PairModule:
    m = PairModule(model=TINY, loss=loss, optim=ADAMW, tokenizer=tok, **kw)
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
    out = module(tok, loss).objective(first_batch(datamodule(tok, scored)))
    assert out.loss.item() == pytest.approx(LN2, abs=1e-4) and list(out.terms) == ["dpo"]
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.0, abs=1e-3)


def test_cached_reference_equals_live_reference(tok, scored):
    """Cached refs (refscores) and a live frozen copy give the same loss and rewards on the same batch."""
    batch = first_batch(datamodule(tok, scored))
    cached, live = module(tok), module(tok, reference="live")
    perturb(cached.model)
    live.model.load_state_dict(cached.model.state_dict())
    for loss in (DPO_SUM, {"name": "dpo", "beta": 0.5, "normalize": "mean"}, {"name": "ipo", "beta": 0.1}):
        cached.terms = live.terms = module(tok, loss).terms
        a, b = cached.objective(batch), live.objective(batch)
        assert abs(a.loss.item() - LN2) > 1e-3  # the policy really moved: the comparison is not ln2 == ln2
        assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6, abs=1e-5)  # fp32 noise on IPO's ~25
        for key in ("rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert a.metrics[key].item() == pytest.approx(b.metrics[key].item(), abs=1e-4)


def test_live_reference_is_frozen_and_not_a_child(tok, scored):
    batch = first_batch(datamodule(tok, scored))
    m = module(tok, reference="live")
    ref = m.ref_model
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(not k.startswith("_ref") and "ref_model" not in k for k in m.state_dict())  # not checkpointed
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in m.model.parameters())
    before = m.reference_scores(batch).logp_sum.clone()
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-2)
    m.objective(batch).loss.backward()
    opt.step()
    assert all(p.grad is None for p in ref.parameters())
    assert torch.equal(m.reference_scores(batch).logp_sum, before)
    assert not torch.allclose(m.score(batch).logp_sum, before)


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
        out = m.objective(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(LN2, abs=1e-4)
    assert losses[-1] < below and losses[-1] < min(losses[:10])
    assert out.metrics["rewards/accuracies"].item() == 1.0


def test_weighted_dpo_weighs_pairs_by_rejected_wrongness(tok, scored):
    """L = (1/B) sum_i w_i l_i with l_i = -log sigmoid(beta h_i) and
    w_i = wrongness(rejected_i) * n / sum_j wrongness(rejected_j) (mean 1 over the data set).
    The module always passes the batch's weights: all ones without a weight_field, which is plain DPO."""
    groups = {g.id: g for g in read_groups(scored)}
    pairs = make_pairs(list(groups.values()), gold_as_chosen=True, weight_field="profile.wrongness")
    raw = [groups[p.meta["group_id"]].completions[p.meta["rejected"]].profile["wrongness"] for p in pairs]
    w = torch.tensor(raw) * len(raw) / sum(raw)
    assert torch.allclose(torch.tensor([p.weight for p in pairs]), w) and len(set(raw)) > 1
    items = [{"chosen": encode(tok, p.question, p.chosen, MAX_LENGTH),
              "rejected": encode(tok, p.question, p.rejected, MAX_LENGTH),
              "ref_chosen": p.ref_chosen, "ref_rejected": p.ref_rejected, "weight": p.weight} for p in pairs[:6]]
    batch = PairCollator(tok.pad_token_id)(items)
    unweighted = {**batch, "weights": torch.ones(6)}  # what the collator gives pairs without a weight_field

    m = module(tok)
    perturb(m.model)
    with torch.no_grad():  # by hand: one forward, summed log-probs, the DPO log-ratio margin per pair
        logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = sequence_logps(logits, batch["input_ids"], batch["completion_mask"]).logp_sum - batch["ref_logp_sum"]
        h = s[:6] - s[6:]
        l = -F.logsigmoid(0.1 * h)
        wb = batch["weights"]
    expected = (wb * l).mean()
    assert m.objective(batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert m.objective(unweighted).loss.item() == pytest.approx(l.mean().item(), abs=1e-5)
    assert abs(expected.item() - l.mean().item()) > 1e-4  # the weights matter on this batch
    batch_norm = module(tok, {**DPO_SUM, "weight_norm": "batch"})
    batch_norm.model.load_state_dict(m.model.state_dict())
    assert batch_norm.objective(batch).loss.item() == pytest.approx(((wb * l).sum() / wb.sum()).item(), abs=1e-5)


def test_rpo_adds_the_length_normalised_nll_of_the_chosen_side(tok, scored):
    """RPO (conf/method/rpo.yaml): L = mean_i -log sigmoid(beta h_i) + alpha * mean_i [-logp(y_c,i) / |y_c,i|].
    Computed by hand from one independent forward: summed log-probs of the chosen rows (rows 0..B-1)
    divided by their completion token counts. At step 0 (policy == reference) the DPO term is ln 2."""
    batch = first_batch(datamodule(tok, scored, batch_size=3))
    m = module(tok, extra_losses={"nll": {"weight": 0.7, "reduction": "sequence"}})
    obj = m.objective(batch)
    with torch.no_grad():
        logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen = sequence_logps(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)[0]
        nll = (-chosen.logp_sum / chosen.n_tokens).mean().item()
    assert set(batch["weights"].tolist()) == {1.0} and chosen.n_tokens.unique().numel() > 1  # lengths differ
    assert list(obj.terms) == ["dpo", "nll"]  # logged as train/dpo, train/nll; train/loss the total
    assert obj.terms["dpo"].item() == pytest.approx(LN2, abs=1e-4)
    assert obj.terms["nll"].item() == pytest.approx(nll, rel=1e-5)
    assert obj.loss.item() == pytest.approx(LN2 + 0.7 * nll, abs=1e-4)
    assert "rewards/margins" in obj.metrics and "nll/tokens" in obj.metrics


def test_missing_refs_error_says_run_refscores(tok, tmp_path):
    """Without a trainer the message still says what to do; train-level test names the file (test_methods_train)."""
    stripped = tmp_path / "norefs.jsonl"
    stripped.write_text("".join(l.replace('"ref"', '"_ref"').replace('"gold_ref"', '"_gold_ref"')
                                for l in FIXTURE.read_text().splitlines(keepends=True)))
    batch = first_batch(datamodule(tok, stripped))
    assert "ref_logp_sum" not in batch
    with pytest.raises(ValueError, match="run lnrl-refscores first"):
        module(tok).objective(batch)
    out = module(tok, {"name": "simpo"}).objective(batch)  # reference-free: fine without refs
    assert math.isfinite(out.loss.item())


def test_two_pairwise_losses_in_one_objective(tok, scored):
    """extra_losses: {simpo: {weight: 0.5, gamma: 0.3}} on DPO: L = dpo + 0.5 * simpo(gamma 0.3), both on the
    same forward; the logged rewards are the primary loss's (DPO's beta * log-ratio, 0 at step 0)."""
    batch = first_batch(datamodule(tok, scored, batch_size=3))
    m = module(tok, extra_losses={"simpo": {"weight": 0.5, "gamma": 0.3}})
    obj = m.objective(batch)
    with torch.no_grad():
        logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = sequence_logps(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)
        simpo = registry.build_loss("simpo", gamma=0.3)(policy_chosen=chosen, policy_rejected=rejected).loss.item()
    assert obj.terms["simpo"].item() == pytest.approx(simpo, rel=1e-5)
    assert obj.loss.item() == pytest.approx(obj.terms["dpo"].item() + 0.5 * simpo, rel=1e-5)
    assert obj.metrics["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-3)


def test_methods_refuse_losses_they_cannot_feed(tok, monkeypatch):
    """The registry's check_compatible decides, with the module's name in the message."""
    with pytest.raises(ValueError, match="PairModule cannot train with loss 'aft'"):
        module(tok, {"name": "aft"})
    with pytest.raises(ValueError, match="GroupModule cannot train with loss 'dpo'"):
        GroupModule(model=TINY, loss=DPO_SUM, optim=ADAMW, tokenizer=tok)
    with pytest.raises(ValueError, match="cannot train with loss 'nll'"):
        module(tok, {"name": "nll"})
    with pytest.raises(ValueError, match=r"extra_losses.x\).*cannot train with loss 'aft'"):
        module(tok, extra_losses={"x": {"name": "aft"}})
    with pytest.raises(ValueError, match="the name 'dpo' is taken by the primary loss"):
        module(tok, extra_losses={"dpo": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"extra_losses.nll.weight=-1.0; must be >= 0"):
        module(tok, extra_losses={"nll": {"weight": -1}})
    with pytest.raises(TypeError, match="loss 'nll' got unknown argument"):
        module(tok, extra_losses={"nll": {"weight": 1.0, "beta": 0.1}})
    with pytest.raises(ValueError, match="method.reference='frozen'"):
        module(tok, reference="frozen")
    assert DPOModule is WeightedDPOModule is PairModule  # former names of the same class


class FakeTrainer:
    """What LnrlModule.setup reads of a Trainer: its datamodule."""

    def __init__(self, dm):
        self.datamodule = dm


def test_weighted_data_refuses_a_loss_that_ignores_weights(tok, monkeypatch):
    """data.weight_field set: every pairwise term must honour weights, and only pairs carry them."""
    spec = registry.get_spec("simpo")
    monkeypatch.setitem(registry._REGISTRY, "simpo_unweighted",
                        registry.LossSpec(**{**spec.__dict__, "name": "simpo_unweighted", "uses_weights": False}))
    dm = LnrlDataModule(source={"name": "gsm_symbolic"}, kind="pairs", prefs_path="p.jsonl",
                        weight_field="profile.pair_weight")
    m = module(tok, {"name": "simpo_unweighted"})
    monkeypatch.setattr(PairModule, "trainer", FakeTrainer(dm), raising=False)
    with pytest.raises(ValueError, match=r"ignores per-example weights.*data.weight_field='profile.pair_weight'"):
        m.setup("fit")
    dm.weight_field = None
    m.setup("fit")  # unweighted data: fine
    module(tok).setup("fit")
    dm.weight_field = "profile.pair_weight"
    module(tok).setup("fit")  # dpo takes weights
    g = GroupModule(model=TINY, loss={"name": "aft"}, optim=ADAMW, tokenizer=tok)
    monkeypatch.setattr(GroupModule, "trainer", FakeTrainer(dm), raising=False)
    with pytest.raises(ValueError, match="GroupModule trains on 'groups' batches but the datamodule serves 'pairs'"):
        g.setup("fit")
