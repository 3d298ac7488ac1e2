"""wandb dashboards: run names from the sweep point, the sample-generation table, and an offline run read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from conftest import CONF_DIR
from lnrl.dashboard import generation_table, name_wandb_run, read_offline_run, run_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def hydra_run(tmp_path):
    """Compose train.yaml as Hydra would for a job and install it as the current HydraConfig."""
    def make(overrides: list[str], mode: str = "RUN", task: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = str(tmp_path / "2025-01-01_12-00-00")
        cfg.hydra.overrides.task = task if task is not None else overrides
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield make
    HydraConfig.instance().cfg = None


def test_names_of_a_sweep_point(hydra_run, monkeypatch):
    monkeypatch.delenv("LNRL_WANDB_GROUP", raising=False)
    task = ["sweep=dpo_beta_norm", "seed=1", "loss.normalize=mean", "loss.beta=0.5"]
    cfg = hydra_run([*task, "tags=[mine]"], mode="MULTIRUN", task=task)
    names = run_names(cfg)
    # group: the preset and the sweep dir's name; name: the point's overrides, sorted, without the sweep choice.
    assert names["group"] == "dpo_beta_norm/2025-01-01_12-00-00"
    assert names["name"] == "loss.beta=0.5,loss.normalize=mean,seed=1"
    assert names["tags"] == ["mine", "method=dpo", "loss=dpo", "data=gsm_symbolic", "kind=pairs"]
    # The logger node gets them where null; its own tags are kept and extended, without duplicates.
    logger = OmegaConf.create({"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "name": None,
                                         "group": "explicit", "tags": ["mine"]}, "csv": {"_target_": "x.CSVLogger"}})
    named = name_wandb_run(logger, cfg)
    assert named.wandb.name == names["name"] and named.wandb.group == "explicit"
    assert list(named.wandb.tags) == names["tags"] and "name" not in named.csv
    assert logger.wandb.name is None  # a copy: the composed config is untouched


def test_single_run_and_env_group(hydra_run, monkeypatch):
    monkeypatch.delenv("LNRL_WANDB_GROUP", raising=False)
    cfg = hydra_run([], mode="RUN")
    names = run_names(cfg)
    assert names["group"] is None and names["name"] is None  # wandb picks a name
    assert names["tags"] == ["method=vft", "loss=nll", "data=gsm_symbolic", "kind=sft"]
    monkeypatch.setenv("LNRL_WANDB_GROUP", "torchrun-sweep")  # set by scripts/sweep_torchrun.py
    assert run_names(cfg)["group"] == "torchrun-sweep"
    assert name_wandb_run(OmegaConf.create({}), cfg) == {}  # logger=none: nothing to name


class FakeProfile:
    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return self.d


class FakeVerifier:
    def __init__(self):
        self.calls = []

    def profile(self, question, solution, reference_answer, truncated=False):
        self.calls.append((question, solution, reference_answer, truncated))
        return FakeProfile({"wrongness": 0.25, "absurdity": 0.5, "degeneracy": 1.0 if truncated else 0.0})


def test_generation_table_columns_and_profile():
    records = [{"id": "q/0", "question": "1+1?", "answer": "2", "completion": "#### 2", "pred": "2", "correct": True,
                "n_tokens": 3, "truncated": False},
               {"id": "q/1", "question": "2+2?", "answer": "4", "completion": "5 5 5", "pred": "5", "correct": False,
                "n_tokens": 16, "truncated": True}]
    cols, rows = generation_table(records, verifier=None)
    assert cols == ["id", "question", "answer", "completion", "pred", "correct", "n_tokens"]
    assert rows[1] == ["q/1", "2+2?", "4", "5 5 5", "5", False, 16]
    v = FakeVerifier()
    cols, rows = generation_table(records, max_rows=1, verifier=v)
    assert cols[-3:] == ["wrongness", "absurdity", "profile"] and len(rows) == 1
    assert v.calls == [("1+1?", "#### 2", "2", False)]
    assert rows[0][-3:-1] == [0.25, 0.5] and json.loads(rows[0][-1])["degeneracy"] == 0.0


@pytest.mark.slow
def test_offline_run_has_names_config_metrics_and_table(tmp_path):
    """One DPO sweep point with logger=wandb (offline): read its transaction log back without syncing."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LNRL_WANDB_GROUP", None)
    res = subprocess.run([sys.executable, "-m", "lnrl.apps.train", "-m", "sweep=dpo_beta_norm", "experiment=fixtures",
                          "logger=wandb", "loss.beta=0.5,0.1", "loss.normalize=mean", "seed=3", "trainer.max_steps=2",
                          "eval.n_examples=3", "eval.max_new_tokens=4", "trainer.enable_progress_bar=false",
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _second_point_has_its_own_run(sweep)
    point = sweep / "0"
    run_dirs = list((point / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1  # under the point's own dir
    run = read_offline_run(run_dirs[0])
    assert run["group"] == "dpo_beta_norm/sweep"
    assert run["name"] == ("eval.max_new_tokens=4,eval.n_examples=3,experiment=fixtures,logger=wandb,loss.beta=0.5,"
                           "loss.normalize=mean,seed=3,trainer.enable_progress_bar=False,trainer.max_steps=2")
    assert {"fixtures", "method=dpo", "loss=dpo", "kind=pairs"} <= set(run["tags"])
    # The resolved config, as train.py logs it.
    assert run["config"]["loss"]["beta"] == 0.5 and run["config"]["loss"]["normalize"] == "mean"
    assert run["config"]["seed"] == 3 and run["config"]["method"]["_target_"].endswith("PairModule")
    # Every numeric metric of metrics.json reached wandb with the same final value.
    metrics = json.loads((point / "metrics.json").read_text())
    for key in ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "val/answer_acc", "val/gen_len", "val/nll"):
        assert key in metrics
    for key, value in metrics.items():
        if isinstance(value, float) and key not in ("seconds",):
            assert run["summary"][key] == pytest.approx(value, rel=1e-6), key
    # The sample-generation table of the final evaluation: one row per held-out question, with the profile.
    assert run["summary"]["samples/after/_type"] == "table-file" and run["summary"]["samples/after/nrows"] == 3
    table = json.loads((run_dirs[0] / "files" / run["summary"]["samples/after/path"]).read_text())
    generations = [json.loads(line) for line in (point / "generations.jsonl").read_text().splitlines()]
    assert table["columns"][:7] == ["id", "question", "answer", "completion", "pred", "correct", "n_tokens"]
    assert [r[0] for r in table["data"]] == [g["id"] for g in generations]
    assert [r[5] for r in table["data"]] == [g["correct"] for g in generations]
    assert table["columns"][7:] == ["wrongness", "absurdity", "profile"]
    assert all(0.0 <= r[7] <= 1.0 for r in table["data"])


def _second_point_has_its_own_run(sweep: Path) -> None:
    # Lightning never calls wandb.finish(); lnrl.sweep.run_point does, so point 1 does not log into point 0's run.
    runs = [read_offline_run(next((sweep / str(i) / "wandb").glob("offline-run-*"))) for i in (0, 1)]
    assert "loss.beta=0.5" in runs[0]["name"] and "loss.beta=0.1" in runs[1]["name"]
    assert runs[1]["config"]["loss"]["beta"] == 0.1
    assert runs[1]["summary"]["val/answer_acc"] == json.loads((sweep / "1" / "metrics.json").read_text())["val/answer_acc"]
