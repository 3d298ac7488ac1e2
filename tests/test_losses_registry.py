"""Loss registry: discovery, configs, build_loss validation, check_compatible."""

from __future__ import annotations

import pkgutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import lnrl.losses
from lnrl.losses import KINDS, LOSSES, build_loss, check_compatible, discover, register_loss
from lnrl.losses import registry
from lnrl.scoring import SeqScores

CONF = Path(lnrl.losses.__file__).parents[1] / "conf" / "loss"


def test_every_loss_module_registers_itself():
    """LOSSES is derived from the modules in lnrl/losses/: each module (but the registry) registers a loss."""
    modules = {m.name for m in pkgutil.iter_modules(lnrl.losses.__path__)} - {"registry"}
    registered_from = {spec.factory.__module__.rsplit(".", 1)[1] for spec in LOSSES.values()}
    assert modules == registered_from
    assert {"nll", "dpo", "ipo", "simpo", "aft", "kto"} <= set(LOSSES)
    assert all(spec.kind in KINDS for spec in LOSSES.values())


def test_every_registered_loss_has_a_config_and_every_config_builds():
    yamls = {p.stem: p for p in CONF.glob("*.yaml")}
    assert set(yamls) == set(LOSSES), "conf/loss/*.yaml and the registry disagree"
    for stem, path in yamls.items():
        cfg = OmegaConf.load(path)
        assert cfg.name == stem
        # Every hyperparameter is in the yaml, so `loss.<field>=...` overrides work without `+`.
        assert set(cfg) - {"name"} == set(LOSSES[stem].params), path
        loss = build_loss(**cfg)
        assert loss.name == stem
        for field, default in LOSSES[stem].params.items():  # the yaml and the code agree on defaults
            assert getattr(loss, field) == cfg[field] == default, f"{path}: {field}"


def test_build_loss_validation():
    with pytest.raises(TypeError, match=r"loss 'dpo' got unknown argument\(s\) gamma.*allowed: beta, normalize"):
        build_loss("dpo", gamma=1.0)
    with pytest.raises(ValueError, match="normalize='avg'"):
        build_loss("dpo", normalize="avg")
    with pytest.raises(ValueError, match="unknown loss 'orpo'; registered losses: aft, dpo"):
        build_loss("orpo")
    loss = build_loss(**{"name": "ipo", "_target_": "ignored", "beta": 0.3})
    assert loss.beta == 0.3 and loss.normalize == "mean"


def test_check_compatible():
    for dpo in ("dpo", build_loss("dpo")):
        assert check_compatible(dpo, kind="pairwise", has_reference=True, has_weights=True).name == "dpo"
    with pytest.raises(ValueError, match="'aft'.*group loss and AFT feeds pairwise.*can feed: dpo, ipo, simpo"):
        check_compatible("aft", kind="pairwise", has_reference=True, method="AFT")
    with pytest.raises(ValueError, match="needs reference scores.*can feed: simpo"):
        check_compatible(build_loss("dpo"), kind="pairwise", has_reference=False)
    with pytest.raises(ValueError, match="ignores per-example weights"):
        check_compatible("aft", kind="group", has_reference=False, has_weights=True)
    check_compatible("simpo", kind=("pairwise", "group"), has_reference=False)
    check_compatible("aft", kind=("pairwise", "group"), has_reference=False)


def test_a_new_loss_file_is_discovered(tmp_path, monkeypatch):
    """Adding a loss = one module with one @register_loss: discover() finds it, build_loss builds it."""
    pkg = tmp_path / "my_losses"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "hinge.py").write_text(textwrap.dedent('''
        import torch
        from lnrl.losses import LossOutput, register_loss

        @register_loss("test_hinge", kind="pairwise", needs_reference=False, uses_weights=False)
        def hinge(margin: float = 1.0):
            """Hinge: l = max(0, margin - (s_c - s_r))."""
            def loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, weights=None):
                per = torch.relu(margin - (policy_chosen.logp_sum - policy_rejected.logp_sum))
                return LossOutput(per.mean(), per, {})
            return loss
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert discover("my_losses") == ["hinge"]
        spec = LOSSES["test_hinge"]
        assert spec.kind == "pairwise" and dict(spec.params) == {"margin": 1.0}
        loss = build_loss("test_hinge", margin=2.0)
        c = SeqScores(torch.tensor([-1.0, -5.0]), torch.ones(2))
        r = SeqScores(torch.tensor([-2.0, -1.0]), torch.ones(2))
        # margins s_c - s_r = 1, -4: max(0, 2 - 1) = 1, max(0, 2 + 4) = 6
        assert loss(policy_chosen=c, policy_rejected=r).per_example.tolist() == [1.0, 6.0]
        check_compatible(loss, kind="pairwise", has_reference=False)
        with pytest.raises(TypeError, match="'test_hinge' got unknown argument"):
            build_loss("test_hinge", beta=1.0)
    finally:
        registry._REGISTRY.pop("test_hinge", None)
        for name in ("my_losses", "my_losses.hinge"):
            sys.modules.pop(name, None)


def test_registration_errors():
    with pytest.raises(ValueError, match="'dpo' is registered twice"):
        @register_loss("dpo")
        class Impostor:
            kind, needs_reference, uses_weights = "pairwise", True, True
    with pytest.raises(ValueError, match="kind='listwise'"):
        @register_loss("test_bad_kind", kind="listwise")
        def bad():
            return None
    with pytest.raises(TypeError, match="must declare `kind`"):
        @register_loss("test_no_kind")
        def undeclared():
            return None
    assert "test_bad_kind" not in LOSSES and "test_no_kind" not in LOSSES


def test_docs_compatibility_table_matches_the_registry():
    """docs/methods.md's "Which method can use which loss" table states each listed loss's registry traits
    (a new loss is not required to be listed: adding one touches only its file, yaml(s) and test)."""
    doc = (Path(lnrl.losses.__file__).parents[2] / "docs" / "methods.md").read_text()
    table = doc[doc.index("## Which method can use which loss"):]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in LOSSES:
            rows[cells[0]] = (cells[1], cells[2] == "yes", cells[3] == "yes")
    assert len(rows) >= 6
    for name, traits in rows.items():
        spec = LOSSES[name]
        assert traits == (spec.kind, spec.needs_reference, spec.uses_weights), name
