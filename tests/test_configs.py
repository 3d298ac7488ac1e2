"""Every shipped config composes and its objects instantiate; the list is derived from the conf tree.
Each setting has one home: the tests below derive or check every other place that could restate it."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, TINY, compose_cfg
from lnrl.data import LnrlDataModule
from lnrl.utils import to_dict

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra",))


def bases(group: str) -> set[str]:
    """Shared parts, not options: `base.yaml` configs that other configs of the group extend (data/base).
    A config extended by another that is an option itself (trainer=cpu under gpu, data=gsm_symbolic under
    gsm_symbolic_easy, method=dpo under ipo) stays an option."""
    out = set()
    for f in (CONF_DIR / group).glob("*.yaml"):
        for entry in OmegaConf.load(f).get("defaults") or []:
            if entry == "base" and (CONF_DIR / group / "base.yaml").exists():
                out.add(entry)
    return out


OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml")) if f.stem not in bases(g)]
METHODS = sorted(f.stem for f in (CONF_DIR / "method").glob("*.yaml"))
SOURCES = sorted(f.stem for f in (CONF_DIR / "data").glob("*.yaml") if f.stem != "base")
NEEDS = {("model", "hf"): ["model.path=/nonexistent"], ("data", "jsonl"): ["data.path=/nonexistent.jsonl"]}


def test_every_group_has_options():
    assert {"model", "data", "method", "loss", "optim", "scheduler", "trainer", "logger", "callbacks",
            "paths", "experiment", "debug"} <= set(GROUPS)
    assert all(list((CONF_DIR / g).glob("*.yaml")) for g in GROUPS)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    extra = [f"{group}={option}", *NEEDS.get((group, option), [])]
    cfg = compose_cfg([*TINY, *extra], tmp_path)
    # Global-package groups (experiment, debug, sweep) patch other keys and have none of their own.
    assert group in ("experiment", "debug", "sweep", "logger", "callbacks") or cfg[group] is not None
    if group == "trainer" and option in ("gpu", "fsdp"):
        return  # GPU-only strategies cannot be built on this machine; composing is the check.
    if group in ("trainer",):
        cfg.trainer.accelerator = "cpu" if cfg.trainer.get("accelerator") else cfg.trainer.get("accelerator")
    from lnrl.utils import build_all

    if group in ("logger", "callbacks"):
        objs = build_all(cfg[group])
        assert len(objs) == len([c for c in (cfg[group] or {}).values() if c])
    if group == "data":
        dm = instantiate(cfg.data, tokenizer=None, _convert_="all")
        assert dm.kind == cfg.data.kind
    if group == "loss":
        from lnrl.losses import build_loss

        assert build_loss(**cfg.loss) is not None
    if group == "optim":  # a partial optimizer: the module calls it on the parameters
        assert cfg.optim.lr > 0 and cfg.optim._partial_
        opt = instantiate(cfg.optim, _convert_="all")([torch.zeros(2, requires_grad=True)])
        assert type(opt) is get_class(cfg.optim._target_) and opt.defaults["lr"] == cfg.optim.lr
    if group == "scheduler":  # a partial factory of (optimizer, total_steps)
        opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=1.0)
        assert isinstance(instantiate(cfg.scheduler)(opt, total_steps=10), torch.optim.lr_scheduler.LRScheduler)


def test_data_base_holds_the_datamodule_defaults_once():
    """conf/data/base.yaml lists every datamodule setting with the class's own default; a source config
    sets its source node and only what differs from the base."""
    base = OmegaConf.load(CONF_DIR / "data" / "base.yaml")
    params = inspect.signature(LnrlDataModule).parameters
    assert base._target_ == "lnrl.data.LnrlDataModule"
    settings = {k: v for k, v in base.items() if k != "_target_"}
    assert len(settings) == 14 and all(settings[k] == params[k].default for k in settings), settings
    assert SOURCES == ["gsm8k", "gsm_symbolic", "gsm_symbolic_easy", "jsonl", "metamathqa"]
    for stem in SOURCES:
        own = OmegaConf.load(CONF_DIR / "data" / f"{stem}.yaml")
        # a source extends the base; a variant (gsm_symbolic_easy) extends a source and changes its node
        assert list(own.defaults) in (["base", "_self_"], ["gsm_symbolic", "_self_"]) and "source" in own
        restated = [k for k in own if k in settings and own[k] == settings[k]]
        assert not restated, f"conf/data/{stem}.yaml restates the base's {restated}"


def test_data_overrides_still_reach_the_datamodule(tmp_path):
    cfg = compose_cfg([*TINY, "data=gsm8k", "data.path=/x.jsonl", "data.batch_size=3", "data.max_length=99",
                       "data.source.n_train=5"], tmp_path)
    assert (cfg.data.source.path, cfg.data.batch_size, cfg.data.max_length, cfg.data.source.n_train) == \
        ("/x.jsonl", 3, 99, 5)
    assert compose_cfg(TINY, tmp_path).data.max_length == 384  # gsm_symbolic's own, over the base's 512


@pytest.mark.parametrize("method", METHODS)
def test_method_preset_builds_its_module_and_restates_no_default(method, tmp_path):
    """Each preset: its module accepts its loss (registry check), the data kind comes from the module
    class (no data.kind in the yaml), and loss fields it sets differ from the loss config's defaults."""
    own = OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml")
    assert "kind" not in own.get("data", {}), f"conf/method/{method}.yaml sets data.kind; the module class does"
    cfg = compose_cfg([*TINY, f"method={method}", "experiment=fixtures"], tmp_path)
    loss_defaults = OmegaConf.load(CONF_DIR / "loss" / f"{cfg.loss.name}.yaml")
    restated = [k for k, v in own.get("loss", {}).items() if loss_defaults.get(k) == v]
    assert not restated, f"conf/method/{method}.yaml restates loss defaults {restated}"
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim),
                         scheduler=to_dict(cfg.scheduler), _convert_="all")
    assert module.data_kind in ("sft", "pairs", "groups") and module.terms[0].name == cfg.loss.name
    dm = instantiate(cfg.data, tokenizer=None, _convert_="all")
    assert dm.kind is None  # not set by any config: lnrl-train asks the module
    dm.use_kind(module.data_kind, method=type(module).__name__)
    assert dm.kind == module.data_kind


def test_rpo_preset_is_dpo_plus_length_normalised_nll(tmp_path):
    cfg = compose_cfg([*TINY, "method=rpo", "experiment=fixtures"], tmp_path)
    module = instantiate(cfg.method, model=to_dict(cfg.model), loss=to_dict(cfg.loss), optim=to_dict(cfg.optim),
                         _convert_="all")
    assert [(t.name, t.weight) for t in module.terms] == [("dpo", 1.0), ("nll", 1.0)]
    assert module.terms[1].fn.reduction == "sequence" and module.terms[0].fn.normalize == "sum"


def test_wdpo_preset_mines_hard_negatives_with_the_prefs_weights(tmp_path):
    cfg = compose_cfg([*TINY, "method=wdpo", "experiment=fixtures"], tmp_path)
    assert cfg.data.pairing == "hard_negative" and cfg.data.weight_field == "profile.pair_weight"
    assert cfg.loss.name == "dpo" and cfg.loss.weight_norm == "none"
