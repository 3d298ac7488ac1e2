"""Each alignment method trains end to end through `lnrl.apps.train.train` (the lnrl-train app) on the fixtures.

Configs are composed the way `lnrl-train experiment=fixtures method=...` composes them, with the run
dir pointed at tmp_path (lightning-hydra-template style).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lnrl.apps.refscores import refscores
from lnrl.apps.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "lnrl" / "conf"
FIXTURE = ROOT / "lnrl" / "fixtures" / "groups_tiny.jsonl"
QUICK = ["experiment=fixtures", "trainer.max_steps=2", "+trainer.limit_train_batches=2", "data.batch_size=1",
         "eval.enabled=false"]
PAIR_METRICS = ["train/loss", "train/dpo", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected"]
AFT_METRICS = ["train/loss", "train/aft", "train/nll", "scores/positive", "scores/negative", "aft/boundary",
               "aft/below_boundary", "aft/skipped_groups"]
KTO_METRICS = ["train/loss", "train/kto", "rewards/chosen", "rewards/rejected", "kto/kl"]
# The fixture's profiles predate lnrl-prefs's `pair_weight`; wdpo reads a field it has.
FIXTURE_WEIGHTS = "data.weight_field=profile.wrongness"


def compose_cfg(tmp_path: Path, overrides: list[str], config: str = "train") -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the task
    return cfg


@pytest.mark.parametrize("overrides, names", [
    (["method=aft", "loss.constraint=boundary", "loss.boundary=0.5"], AFT_METRICS),
    (["method=dpo_avg", "loss.beta=0.5"], PAIR_METRICS),
    (["method=wdpo", FIXTURE_WEIGHTS], PAIR_METRICS),
    (["method=kto"], KTO_METRICS),
    (["method=rpo"], PAIR_METRICS + ["train/nll"]),
    (["method=dpo", "optim=sgd", "optim.lr=0.01"], PAIR_METRICS),
], ids=["aft", "dpo_avg", "wdpo", "kto", "rpo", "dpo_sgd"])
def test_method_trains_on_fixtures(tmp_path, overrides, names):
    metrics = train(compose_cfg(tmp_path, QUICK + overrides))
    assert metrics["global_step"] == 2
    for name in names + ["val/loss"]:
        assert math.isfinite(metrics[name]), name
    assert json.loads((tmp_path / "metrics.json").read_text())["train/loss"] == metrics["train/loss"]


def test_dpo_starts_at_ln2_with_refs_from_refscores(tmp_path):
    """lnrl-refscores model=tiny, then lnrl-train method=dpo: policy == reference at step 0, so loss = ln 2."""
    prefs = tmp_path / "groups.jsonl"
    shutil.copy(FIXTURE, prefs)
    refscores(compose_cfg(tmp_path, ["model=tiny", f"input={prefs}", "data.max_length=256", "device=cpu"], "refscores"))
    run = tmp_path / "run"
    train(compose_cfg(run, QUICK + ["method=dpo", f"data.prefs_path={prefs}", "logger=csv"]))
    rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)


def test_missing_refs_error_names_the_file(tmp_path):
    stripped = tmp_path / "norefs.jsonl"
    stripped.write_text(FIXTURE.read_text().replace('"ref"', '"_ref"').replace('"gold_ref"', '"_gold_ref"'))
    with pytest.raises(ValueError, match=rf"{stripped}: .*run lnrl-refscores first"):
        train(compose_cfg(tmp_path, QUICK + ["method=dpo", f"data.prefs_path={stripped}"]))


def test_rpo_total_is_dpo_plus_alpha_nll(tmp_path):
    """The logged terms add up: train/loss = train/dpo + alpha * train/nll (alpha = method.extra_losses.nll.weight)."""
    metrics = train(compose_cfg(tmp_path, QUICK + ["method=rpo", "method.extra_losses.nll.weight=0.5"]))
    assert metrics["train/loss"] == pytest.approx(metrics["train/dpo"] + 0.5 * metrics["train/nll"], rel=1e-5)


def test_explicit_data_kind_must_agree_with_the_method(tmp_path):
    """The data kind comes from the module class; a conflicting data.kind names both."""
    with pytest.raises(ValueError, match="data.kind='groups' conflicts with method PairModule, which trains on 'pairs"):
        train(compose_cfg(tmp_path, QUICK + ["method=dpo", "data.kind=groups"]))


def test_weights_on_groups_are_refused(tmp_path):
    with pytest.raises(ValueError, match="data.weight_field='profile.wrongness' gives per-pair weights, but "
                                         "GroupModule trains on 'groups'"):
        train(compose_cfg(tmp_path, QUICK + ["method=aft", FIXTURE_WEIGHTS]))


def test_method_refuses_a_loss_it_cannot_feed(tmp_path):
    """`method=aft loss=dpo`: the command line wins over the method's loss, and the group module refuses it."""
    with pytest.raises(Exception, match="GroupModule cannot train with loss 'dpo'"):
        train(compose_cfg(tmp_path, QUICK + ["method=aft", "loss=dpo"]))


@pytest.mark.slow
@pytest.mark.parametrize("gold", [False, True])
def test_run_metrics_count_gold_in_the_preference_data(tmp_path, gold):
    """Every training run's metrics.json says how many pairs (groups) it built and how many took the gold CoT
    (data.gold_as_chosen): the counts make_pairs / the group encoder give on the same file."""
    from lnrl.data import make_pairs, read_groups

    groups = read_groups(FIXTURE)
    want: dict = {}
    make_pairs(groups, "all", gold_as_chosen=gold, stats=want)
    all_wrong = sum(g.n_correct == 0 for g in groups)
    assert all_wrong > 0 and (want["pairs_gold_chosen"] > 0) == gold
    pairs = train(compose_cfg(tmp_path / "dpo", QUICK + ["method=dpo", f"data.gold_as_chosen={gold}"]))
    assert (pairs["data/pairs"], pairs["data/pairs_gold_chosen"]) == (want["pairs"], want["pairs_gold_chosen"])
    aft = train(compose_cfg(tmp_path / "aft", QUICK + ["method=aft", f"data.gold_as_chosen={gold}"]))
    assert aft["data/groups_all_incorrect"] == all_wrong
    assert aft["data/groups_gold_positive"] == (all_wrong if gold else 0)


def test_acceptance_on_embedded_model(tmp_path):
    """The issue's acceptance runs on SmolLM2-135M-Instruct, a couple of steps each (max_length 256, batch 1).

    Weights are the run's: hard-negative pairs without gold as chosen (data.gold_as_chosen's default).
    The fixture's cached refs are this model's own scores, so every pair starts at l = ln 2: DPO's first
    loss is ln 2, weighted DPO's (batch of one pair, mean_i w_i l_i) is ln 2 times that pair's weight.
    """
    from lnrl.data import make_pairs, read_groups

    weights = {round(p.weight, 6) for p in make_pairs(read_groups(FIXTURE), "hard_negative", gold_as_chosen=False,
                                                      weight_field="profile.wrongness")}
    assert len(weights) > 1
    embedded = QUICK + ["model=smollm2_135m", "data.max_length=256", "logger=csv"]
    runs = [("aft", ["method=aft", "loss.constraint=boundary", "loss.boundary=0.5"], AFT_METRICS),
            ("dpo_avg", ["method=dpo_avg", "loss.beta=0.5"], PAIR_METRICS),
            ("wdpo", ["method=wdpo", FIXTURE_WEIGHTS], PAIR_METRICS)]
    for name, overrides, names in runs:
        run = tmp_path / name
        metrics = train(compose_cfg(run, embedded + overrides))
        assert metrics["global_step"] == 2 and metrics["model"] == "smollm2-135m-instruct"
        for key in names + ["val/loss"]:
            assert math.isfinite(metrics[key]), (name, key)
        if name != "aft":
            rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
            first = next(float(r["train/loss"]) for r in rows if r.get("train/loss"))
            if name == "wdpo":
                assert any(first == pytest.approx(math.log(2) * w, abs=1e-3) for w in weights), first
            else:
                assert first == pytest.approx(math.log(2), abs=1e-3), name
