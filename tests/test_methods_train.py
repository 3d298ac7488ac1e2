"""Each alignment method trains end to end through `lnrl.train.train` (the lnrl-train app) on the fixtures.

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

from lnrl.refscores import refscores
from lnrl.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "lnrl" / "conf"
FIXTURE = ROOT / "lnrl" / "fixtures" / "groups_tiny.jsonl"
QUICK = ["experiment=fixtures", "trainer.max_steps=2", "+trainer.limit_train_batches=2", "data.batch_size=1",
         "eval.enabled=false"]
PAIR_METRICS = ["train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected"]
AFT_METRICS = ["train/loss", "scores/positive", "scores/negative", "aft/boundary", "aft/below_boundary",
               "aft/skipped_groups"]


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
    (["method=wdpo"], PAIR_METRICS),
], ids=["aft", "dpo_avg", "wdpo"])
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
    refscores(compose_cfg(tmp_path, ["model=tiny", f"input={prefs}", "max_length=256", "device=cpu"], "refscores"))
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


def test_weighted_dpo_needs_a_weight_field(tmp_path):
    with pytest.raises(ValueError, match="set data.weight_field"):
        train(compose_cfg(tmp_path, QUICK + ["method=wdpo", "data.weight_field=null"]))


def test_method_refuses_a_loss_it_cannot_feed(tmp_path):
    """`method=aft loss=dpo`: the command line wins over the method's loss, and AFT refuses it."""
    with pytest.raises(Exception, match="AFTModule cannot train with loss 'dpo'"):
        train(compose_cfg(tmp_path, QUICK + ["method=aft", "loss=dpo"]))


@pytest.mark.slow
def test_acceptance_on_embedded_model(tmp_path):
    """The issue's acceptance runs on SmolLM2-135M-Instruct, a couple of steps each (max_length 256, batch 1).

    The fixture's cached refs are this model's own scores, so weighted DPO starts at ln 2 too.
    """
    embedded = QUICK + ["model=smollm2_135m", "data.max_length=256", "logger=csv"]
    runs = [("aft", ["method=aft", "loss.constraint=boundary", "loss.boundary=0.5"], AFT_METRICS),
            ("dpo_avg", ["method=dpo_avg", "loss.beta=0.5"], PAIR_METRICS),
            ("wdpo", ["method=wdpo"], PAIR_METRICS)]
    for name, overrides, names in runs:
        run = tmp_path / name
        metrics = train(compose_cfg(run, embedded + overrides))
        assert metrics["global_step"] == 2 and metrics["model"] == "smollm2-135m-instruct"
        for key in names + ["val/loss"]:
            assert math.isfinite(metrics[key]), (name, key)
        if name != "aft":
            rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
            first = next(float(r["train/loss"]) for r in rows if r.get("train/loss"))
            assert first == pytest.approx(math.log(2), abs=1e-3), name
