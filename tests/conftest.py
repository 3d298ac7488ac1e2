"""Shared fixtures: compose the real config tree once per test and patch it (lightning-hydra-template style)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import lnrl.utils  # noqa: F401  (registers the config resolvers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run two xdist workers on two cores; more threads per worker makes small matmuls far slower.
torch.set_num_threads(1)

CONF_DIR = Path(lnrl.utils.PACKAGE_DIR) / "conf"
SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"

# A fast, fully offline run: tiny model, few steps, small data, no experiment logger.
TINY = [
    "model=tiny", "logger=none", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
    "data.batch_size=2", "data.eval_batch_size=4", "data.source.n_train=16", "data.source.n_eval=4",
    "eval.n_examples=4", "eval.max_new_tokens=8", "eval.batch_size=4",
]


def compose_cfg(overrides: list[str], tmp_path: Path, config_name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name,
                       overrides=[f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", *overrides])


@pytest.fixture
def tiny_cfg(tmp_path):
    """Compose `train.yaml` with the TINY overrides plus any extra ones: tiny_cfg(["method=dpo", ...])."""
    return lambda extra=(): compose_cfg([*TINY, *extra], tmp_path)
