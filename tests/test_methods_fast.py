"""The methods' training and validation steps through the fast scoring path (lnrl.scoring.score_batch,
`method.fast_scoring: true`, the default) against the plain path (`method.fast_scoring=false`:
`model(...).logits` then `sequence_logps`, one padded forward per batch).

Each case runs the same module, same weights and same batch (real datamodule batches from the fixture
group file) once per path and compares the loss, every logged metric and every parameter gradient in
float32. The plain path is the independent implementation: it is what the TRL parity tests check
against TRL's DPOTrainer (tests/test_trl_parity.py), and `test_module_fast_path_matches_trl` below
checks the module's fast path against TRL directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lnrl.data import LnrlDataModule
from lnrl.methods import GroupModule, PairModule, SFTModule
from lnrl.models import load_model, load_tokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "groups_tiny.jsonl"
TINY = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
EMBEDDED = {"source": "embedded"}
MAX_LENGTH = 160  # longer than every fixture row
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
PAIR_LOSSES = {
    "dpo-sum": {"name": "dpo", "beta": 0.1, "normalize": "sum"},
    "dpo-mean": {"name": "dpo", "beta": 0.5, "normalize": "mean"},
    "ipo": {"name": "ipo", "beta": 0.1},
    "simpo": {"name": "simpo"},
}
AFT_CONSTRAINTS = ["none", "detached", "boundary"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def batches(tok, kind: str, batch_size: int, **kw) -> list[dict]:
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "seed": 0, "n_train": 4, "n_eval": 4}, kind=kind,
                        prefs_path=str(FIXTURE), max_length=MAX_LENGTH, batch_size=batch_size, tokenizer=tok, **kw)
    dm.setup("fit")
    return list(dm.train_dataloader())


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float) -> None:
    """Move the policy off the reference, so log-ratios (and the comparison) are not all zero."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(scale * torch.randn(p.shape, generator=g))


def run(module, batch: dict, fast: bool, step: str = "training_step"):
    """(logged metrics, gradients) of one training (or validation) step through one path."""
    module.fast_scoring = fast
    logged: dict[str, torch.Tensor] = {}
    module.log_metrics = lambda prefix, metrics, batch_size: logged.update(
        {f"{prefix}/{k}": v.detach().clone() for k, v in metrics.items()})
    module.model.zero_grad(set_to_none=True)
    if step == "training_step":
        module.training_step(batch, 0).backward()
    else:
        with torch.no_grad():
            module.validation_step(batch, 0)
    grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return logged, grads


def compare(module, batch: dict, *, grad_tol: float = 1e-5, normwise: bool = False, step: str = "training_step"):
    """Fast and plain path agree: every logged value to 1e-5; gradients elementwise (atol = rtol = grad_tol)
    or, with `normwise`, ||g_fast - g_plain|| / ||g_plain|| < grad_tol over all parameters together."""
    plain, g_plain = run(module, batch, fast=False, step=step)
    fast, g_fast = run(module, batch, fast=True, step=step)
    assert fast.keys() == plain.keys() and ("train/loss" if step == "training_step" else "val/loss") in fast
    for key in plain:
        torch.testing.assert_close(fast[key], plain[key], atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")
    assert g_fast.keys() == g_plain.keys()
    if step != "training_step":
        return plain, g_plain
    assert len(g_plain) == len([p for p in module.model.parameters() if p.requires_grad])
    if normwise:
        names = sorted(g_plain)
        a = torch.cat([g_fast[n].double().flatten() for n in names])
        b = torch.cat([g_plain[n].double().flatten() for n in names])
        assert ((a - b).norm() / b.norm()).item() < grad_tol
    else:
        for name in g_plain:
            torch.testing.assert_close(g_fast[name], g_plain[name], atol=grad_tol, rtol=grad_tol,
                                       msg=lambda m: f"{name}: {m}")
    assert max(g.abs().max().item() for g in g_plain.values()) > 1e-4  # the comparison has something to compare
    return plain, g_plain


def pair_module(tok, model_cfg, loss, **kw) -> PairModule:
    m = PairModule(model=model_cfg, loss=loss, optim=ADAMW, tokenizer=tok, **kw)
    m.configure_model()
    return m


def group_module(tok, model_cfg, loss, **kw) -> GroupModule:
    m = GroupModule(model=model_cfg, loss=loss, optim=ADAMW, tokenizer=tok, **kw)
    m.configure_model()
    return m


def mixed(b) -> bool:
    """Some group of the batch has both a correct and an incorrect completion."""
    return any(b["is_positive"][b["group_ids"] == g].unique().numel() == 2 for g in b["group_ids"].unique())


# ------------------------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("reference", ["cached", "live"])
@pytest.mark.parametrize("name", [*PAIR_LOSSES, "rpo"])
def test_pair_module_fast_equals_plain(tok, name, reference):
    """DPO (sum, mean), IPO, SimPO and RPO (DPO + NLL on the chosen rows); cached refs from the fixture
    or a live frozen copy (scored through the same path as the policy)."""
    loss = PAIR_LOSSES.get(name, PAIR_LOSSES["dpo-sum"])
    extra = {"nll": {"weight": 0.7, "reduction": "sequence"}} if name == "rpo" else None
    m = pair_module(tok, TINY, loss, reference=reference, extra_losses=extra)
    perturb(m.model, 0.02)
    batch = batches(tok, "pairs", 4, gold_as_chosen=True)[0]
    logged, _ = compare(m, batch)
    if name != "simpo":
        assert abs(logged["train/loss"].item() - math.log(2)) > 1e-3  # not the policy == reference value


def test_weighted_pairs_fast_equals_plain(tok):
    """Weighted DPO (per-pair weights from the data): the weights reach the loss the same way on both paths."""
    m = pair_module(tok, TINY, PAIR_LOSSES["dpo-sum"])
    perturb(m.model, 0.02)
    batch = batches(tok, "pairs", 4, gold_as_chosen=True, weight_field="profile.wrongness")[0]
    assert batch["weights"].unique().numel() > 1
    compare(m, batch)


@pytest.mark.parametrize("sft_weight", [0.0, 1.0])
@pytest.mark.parametrize("constraint", AFT_CONSTRAINTS)
def test_group_module_fast_equals_plain(tok, constraint, sft_weight):
    """AFT with each constraint, with and without the NLL term on the gold rows (scored in the same call)."""
    m = group_module(tok, TINY, {"name": "aft", "constraint": constraint, "boundary": 0.5, "normalize": "mean"},
                     sft_weight=sft_weight)
    batch = next(b for b in batches(tok, "groups", 2) if mixed(b))
    compare(m, batch)


@pytest.mark.parametrize("reference", ["cached", "live"])
def test_group_reference_loss_and_ranks_fast_equal_plain(tok, reference):
    """KTO over groups (needs reference scores of the members), and AFT on rank levels."""
    m = group_module(tok, TINY, {"name": "kto"}, reference=reference, sft_weight=0.5)
    perturb(m.model, 0.02)
    batch = next(b for b in batches(tok, "groups", 2) if mixed(b))
    compare(m, batch)
    ranked = group_module(tok, TINY, {"name": "aft", "constraint": "boundary"}, use_ranks=True, sft_weight=1.0)
    compare(ranked, batch)


def test_sft_module_and_validation_fast_equal_plain(tok):
    """VFT's NLL on SFT rows (every row its own prompt) and val/loss (the NLL of held-out gold CoTs)."""
    m = SFTModule(model=TINY, loss={"name": "nll"}, optim=ADAMW, tokenizer=tok)
    m.configure_model()
    train = batches(tok, "sft", 4)[0]
    compare(m, train)
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "seed": 0, "n_train": 4, "n_eval": 4}, kind="sft",
                        max_length=MAX_LENGTH, batch_size=4, tokenizer=tok)
    dm.setup("fit")
    val = next(iter(dm.val_dataloader()))
    logged, _ = compare(m, val, step="validation_step")
    assert 0 < logged["val/loss"].item() < 50


def test_fast_path_runs_instead_of_the_models_forward(tok, monkeypatch):
    """The wiring is real: with fast scoring neither the policy's nor the live reference's full forward
    (which builds [B, T, V] logits) runs in a training step; with fast_scoring=False both do."""
    m = pair_module(tok, TINY, PAIR_LOSSES["dpo-sum"], reference="live")
    batch = batches(tok, "pairs", 2, gold_as_chosen=True)[0]
    calls = []
    for who, model in (("policy", m.model), ("reference", m.ref_model)):
        real = model.forward
        monkeypatch.setattr(model, "forward", lambda *a, _real=real, _who=who, **kw: calls.append(_who) or _real(*a, **kw))
    import lnrl.scoring as scoring

    scoring._capabilities(m.model), scoring._capabilities(m.ref_model)  # the one-off probe runs the forward
    calls.clear()
    run(m, batch, fast=True)
    assert calls == []
    run(m, batch, fast=False)
    assert sorted(calls) == ["policy", "reference"]


def test_fast_scoring_is_a_method_option(tiny_cfg):
    """`method.fast_scoring` defaults to true, `+method.fast_scoring=false` selects the plain path, and a
    value that is not a boolean is refused naming the key."""
    from hydra.utils import instantiate

    from lnrl.utils import to_dict

    def build(extra):
        cfg = tiny_cfg(extra)
        return instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim))

    assert build([]).fast_scoring is True
    assert build(["+method.fast_scoring=false"]).fast_scoring is False
    assert build(["experiment=fixtures", "method=aft", "+method.fast_scoring=false"]).fast_scoring is False
    with pytest.raises(Exception, match="method.fast_scoring='yes'; expected true"):  # Hydra wraps the ValueError
        build(["+method.fast_scoring=yes"])


def test_module_fast_path_matches_trl(tok, tmp_path):
    """PairModule's objective on TRL 1.16's own collated batch (its DPO loss, live reference) equals TRL's
    compute_loss, and so do the policy gradients, through the fast path."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    m = pair_module(tok, TINY, {"name": "dpo", "beta": 0.5, "normalize": "sum"}, reference="live")
    perturb(m.model, 0.05)  # the policy moves off the (frozen) reference
    policy, ref = m.model, m.ref_model
    data = datasets.Dataset.from_dict({
        "prompt": ["What is 2+3?", "Compute 7*6.", "Tom has 3 apples and buys 4 more. How many?"],
        "chosen": [" 2+3=5. #### 5", " 42", " 3 + 4 = 7 apples. #### 7"],
        "rejected": [" It is 6.", " 7*6 = 13 so #### 13", " 12"],
    })
    args = trl.DPOConfig(output_dir=str(tmp_path), loss_type="sigmoid", beta=0.5, report_to=[], bf16=False,
                         use_cpu=True, activation_checkpointing=False, seed=0)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
    policy.train()
    trl_loss = trainer.compute_loss(policy, batch)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad(set_to_none=True)

    ours = m.objective({**batch, "weights": torch.ones(len(data))})  # the fast path (the default)
    ours.loss.backward()
    assert abs(ours.loss.item() - math.log(2)) > 1e-3
    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for mine, theirs in zip((p.grad for p in policy.parameters()), trl_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)  # the issue-9 criterion


# --------------------------------------------------------------------------- the embedded model (slow)


@pytest.fixture(scope="module")
def embedded_tok():
    return load_tokenizer(EMBEDDED)


@pytest.mark.slow
@pytest.mark.parametrize("name, reference", [("dpo-sum", "live"), ("dpo-mean", "cached"), ("ipo", "live"),
                                             ("simpo", "cached")])
def test_embedded_pair_losses_fast_equal_plain(embedded_tok, name, reference):
    """SmolLM2-135M, float32, through PairModule's training_step on two fixture pairs (the policy
    perturbed off its reference): loss and metrics equal the plain path's to 1e-5, gradients normwise
    (||g_fast - g_plain|| / ||g_plain|| < 3e-5, the float32 distance of either path from float64, see the
    AFT case below; elementwise a handful of the 28M embedding entries differ by ~2e-5 from summation
    order alone, and dpo-sum/live measured 1.05e-5 normwise). A live reference is the embedded model scored by the same path; cached refs are the fixture's
    (computed with the embedded model)."""
    m = pair_module(embedded_tok, EMBEDDED, PAIR_LOSSES[name], reference=reference)
    perturb(m.model, 2e-3)
    batch = batches(embedded_tok, "pairs", 2, gold_as_chosen=True)[0]
    logged, _ = compare(m, batch, grad_tol=3e-5, normwise=True)
    assert math.isfinite(logged["train/loss"].item())


@pytest.mark.slow
@pytest.mark.parametrize("constraint", AFT_CONSTRAINTS)
def test_embedded_aft_fast_equals_plain(embedded_tok, constraint):
    """SmolLM2-135M, float32, through GroupModule's training_step (AFT + NLL on the gold rows).

    Loss and metrics to 1e-5. Gradients normwise: ||g_fast - g_plain|| / ||g_plain|| < 1e-5 over all
    parameters. Elementwise 1e-5 is below float32 resolution here: the gold NLL gives gradients up to
    ~40 on the norm weights, and the plain path itself is ~3e-5 of each tensor's scale away from its
    float64 value (tests/test_scoring_fast.py::test_embedded_model_matches_plain_path measures both
    paths against float64: equally far from it).
    """
    m = group_module(embedded_tok, EMBEDDED, {"name": "aft", "constraint": constraint, "boundary": 0.5,
                                              "normalize": "mean"}, sft_weight=1.0)
    batch = next(b for b in batches(embedded_tok, "groups", 1) if mixed(b))
    compare(m, batch, normwise=True)
