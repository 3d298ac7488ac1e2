"""KTO by hand, and through the group module with a live reference.

Notation (lnrl/losses/kto.py): rho = s - s_ref, r = beta rho, z = beta max(0, mean rho) (no gradient),
desirable l = lambda_D (1 - sigmoid(r - z)) = lambda_D sigmoid(z - r),
undesirable l = lambda_U (1 - sigmoid(z - r)) = lambda_U sigmoid(r - z), L = mean over responses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lnrl.losses import LOSSES, build_loss, check_compatible
from lnrl.scoring import SeqScores

FIXTURE = Path(__file__).resolve().parents[1] / "lnrl" / "fixtures" / "groups_tiny.jsonl"


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def seq(logps, n=None, grad=False):
    n = [1] * len(logps) if n is None else n
    return SeqScores(torch.tensor(logps, requires_grad=grad), torch.tensor(n))


GROUPS = torch.tensor([0, 0, 1, 1])
GOOD = torch.tensor([True, False, True, False])


def test_kl_estimate_clamped_at_zero():
    """s = [-10, -12, -9, -14], s_ref = -11: rho = [1, -1, 2, -3], mean -0.25 -> z = 0.
    beta = 0.5: r = [0.5, -0.5, 1, -1.5]; lambda_D = 1, lambda_U = 2:
    L = (sig(-0.5) + 2 sig(-0.5) + sig(-1) + 2 sig(-1.5)) / 4."""
    kto = build_loss("kto", beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    out = kto(scores=seq([-10.0, -12.0, -9.0, -14.0]), group_ids=GROUPS, is_positive=GOOD,
              ref_scores=seq([-11.0] * 4))
    expected = [sig(-0.5), 2 * sig(-0.5), sig(-1.0), 2 * sig(-1.5)]
    torch.testing.assert_close(out.per_example, torch.tensor(expected))
    assert out.loss.item() == pytest.approx(sum(expected) / 4, abs=1e-6)
    assert out.metrics["kto/kl"].item() == 0.0


def test_positive_kl_estimate_shifts_the_reference_point_and_carries_no_gradient():
    """s = [-8, -12, -9, -11], s_ref = -11: rho = [3, -1, 2, 0], mean 1 -> z = beta * 1 = 0.5 (beta 0.5).
    r = [1.5, -0.5, 1, 0]: l = [sig(-1), 2 sig(-1), sig(-0.5), 2 sig(-0.5)] (lambda_U = 2).
    With z held constant: dL/ds_0 = -(beta / 4) sig(-1) sig(1) (descent raises a desirable score),
    dL/ds_1 = +(2 beta / 4) sig(-1) sig(1) (descent lowers an undesirable one). Were z differentiated,
    dz/ds_0 = beta / 4 would change both."""
    s = seq([-8.0, -12.0, -9.0, -11.0], grad=True)
    out = build_loss("kto", beta=0.5, undesirable_weight=2.0)(
        scores=s, group_ids=GROUPS, is_positive=GOOD, ref_scores=seq([-11.0] * 4))
    expected = [sig(-1.0), 2 * sig(-1.0), sig(-0.5), 2 * sig(-0.5)]
    assert out.loss.item() == pytest.approx(sum(expected) / 4, abs=1e-6)
    out.loss.backward()
    d = sig(-1.0) * sig(1.0)
    assert s.logp_sum.grad[0].item() == pytest.approx(-0.5 / 4 * d, abs=1e-7)
    assert s.logp_sum.grad[1].item() == pytest.approx(2 * 0.5 / 4 * d, abs=1e-7)
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["kto/kl"] == pytest.approx(1.0) and m["rewards/chosen"] == pytest.approx(1.25)
    assert m["rewards/rejected"] == pytest.approx(-0.25) and m["rewards/margins"] == pytest.approx(1.5)
    assert m["logps/chosen"] == pytest.approx(-8.5) and m["logps/rejected"] == pytest.approx(-11.5)
    assert m["kto/desirable"] == 2 and m["kto/undesirable"] == 2


@pytest.mark.parametrize("beta", [0.05, 0.1, 2.0])
def test_policy_equal_to_reference_gives_half_lambda(beta):
    """rho = 0 everywhere => z = 0, r = 0, l = lambda / 2 for its kind, for any beta:
    3 desirable (lambda_D = 1) and 1 undesirable (lambda_U = 1.5): L = (3 + 1.5) / (2 * 4)."""
    torch.manual_seed(0)
    s = seq(torch.randn(4).mul(20).tolist(), [3, 5, 7, 9])
    out = build_loss("kto", beta=beta, undesirable_weight=1.5)(
        scores=s, group_ids=GROUPS, is_positive=torch.tensor([True, True, True, False]), ref_scores=s)
    assert out.loss.item() == pytest.approx(4.5 / 8, abs=1e-6)


def test_mean_normalisation():
    """Desirable: -6/3 vs ref -9/3 -> rho 1; undesirable: -8/4 vs ref -4/4 -> rho -1; mean 0 -> z = 0.
    beta = 1: l = [sig(-1), sig(-1)]. Summed instead: rho = [3, -4], mean -0.5 -> z = 0,
    l = [sig(-3), sig(-4)]."""
    kw = dict(scores=seq([-6.0, -8.0], [3, 4]), group_ids=torch.tensor([0, 0]),
              is_positive=torch.tensor([True, False]), ref_scores=seq([-9.0, -4.0], [3, 4]))
    assert build_loss("kto", beta=1.0, normalize="mean")(**kw).loss.item() == pytest.approx(sig(-1.0), abs=1e-6)
    assert build_loss("kto", beta=1.0)(**kw).loss.item() == pytest.approx((sig(-3.0) + sig(-4.0)) / 2, abs=1e-6)


def test_declares_what_it_needs_and_validates():
    spec = LOSSES["kto"]
    assert (spec.kind, spec.needs_reference, spec.uses_weights) == ("group", True, False)
    check_compatible("kto", kind="group", has_reference=True)
    kw = dict(scores=seq([-1.0, -2.0]), group_ids=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="needs reference scores"):
        build_loss("kto")(**kw, is_positive=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="use_ranks=false"):
        build_loss("kto")(**kw, ranks=torch.tensor([1, 2]), ref_scores=seq([-1.0, -2.0]))
    with pytest.raises(ValueError, match="beta"):
        build_loss("kto", beta=0.0)
    with pytest.raises(ValueError, match="undesirable_weight"):
        build_loss("kto", undesirable_weight=-1.0)


def test_group_module_serves_kto_a_live_reference():
    """The group module feeds KTO every response of the batch with the reference's scores of the same
    rows. With reference=live the reference is the starting model, so at step 0 every rho = 0 and
    L = (n_D lambda_D + n_U lambda_U) / (2 N), counted from the batch; after one step the policy moved."""
    from lnrl.data import LnrlDataModule
    from lnrl.methods import GroupModule
    from lnrl.models import load_tokenizer

    tiny = {"source": "tiny", "name": "tiny-llama", "init_seed": 0}
    tok = load_tokenizer(tiny)
    dm = LnrlDataModule(source={"name": "gsm_symbolic", "seed": 0, "n_train": 2, "n_eval": 2}, kind="groups",
                        prefs_path=str(FIXTURE), max_length=160, batch_size=3, tokenizer=tok)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = {"name": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    m = GroupModule(model=tiny, loss=loss, optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5},
                    tokenizer=tok, reference="live")
    m.configure_model()
    n_good = int(batch["is_positive"].sum())
    n = batch["is_positive"].numel()
    obj = m.objective(batch)
    assert obj.loss.item() == pytest.approx((n_good * 1.0 + (n - n_good) * 1.5) / (2 * n), abs=1e-5)
    assert list(obj.terms) == ["kto"] and obj.metrics["kto/kl"].item() == pytest.approx(0.0, abs=1e-5)
    opt = m.optim_factory(m.model.parameters())
    obj.loss.backward()
    opt.step()
    assert abs(m.objective(batch).loss.item() - obj.loss.item()) > 1e-6
