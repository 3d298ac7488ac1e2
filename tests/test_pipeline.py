"""The main job: stage configs composed from one conf tree, then the whole pipeline on the tiny model."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lnrl.apps.pipeline import Pipeline, run_from_overrides
from lnrl.overrides import dedupe, flatten, format_value
from lnrl.reporting import METRICS

METHODS = ("vft", "aft", "dpo", "dpo_avg", "wdpo")


@pytest.mark.parametrize("value", ["72", "a b", "it's", "null", "", None, True, False, 3, 1e-5, -0.5,
                                   [1, "x y"], {"a": 1, "b": "c d"}, "plain/path-1.jsonl", "${out_dir}/x"])
def test_format_value_round_trips_through_hydras_parser(value):
    override = OverridesParser.create().parse_override(f"key={format_value(value)}")
    assert override.value() == value



def kind_of(cfg) -> str:
    """The batches a stage's method trains on (the module class is the one home of the data kind)."""
    return get_class(cfg.method._target_).data_kind

def test_flatten_and_dedupe():
    assert flatten({"trainer": {"max_steps": 8, "x": {}}, "logger": "csv", "betas": [0.9, 0.99]}) == {
        "trainer.max_steps": 8, "logger": "csv", "betas": [0.9, 0.99]}
    assert flatten({}) == {}
    assert dedupe(["a=1", "b=2", "a=3", "+c=1", "c=2"]) == ["b=2", "a=3", "c=2"]


@pytest.fixture
def pipeline(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_module("lnrl.conf", version_base="1.3"):
        cfg = compose("pipeline", overrides=["model=tiny", "data.source.n_train=8", "trainer.max_steps=99",
                                             "stages.align.optim.lr=0.5", f"out_dir={tmp_path}"],
                      return_hydra_config=True)
        yield Pipeline(cfg, cfg.hydra.runtime.choices)
    GlobalHydra.instance().clear()


def test_stage_configs_get_shared_nodes_sections_and_wiring(pipeline, tmp_path):
    p = pipeline
    vft = p.compose("train", "vft", ["method=vft"], ["train", "vft"])
    assert vft.model.source == "tiny" and vft.data.source.n_train == 8 and kind_of(vft) == "sft"
    assert vft.trainer.max_steps == p.cfg.stages.vft.trainer.max_steps  # the stage's section wins
    assert vft.logger.csv is not None and not vft.eval.enabled and vft.callbacks in (None, {})

    dpo = p.compose("train", "dpo", ["method=dpo", *p.hf("vft")], ["train", "align", "dpo"])
    assert dpo.model.source == "hf" and dpo.model.path == str(tmp_path / "vft" / "hf_model")
    assert dpo.optim.lr == 0.5 and dpo.trainer.max_steps == p.cfg.stages.align.trainer.max_steps
    assert kind_of(dpo) == "pairs" and dpo.data.prefs_path == f"{tmp_path}/prefs/groups.jsonl"
    assert dpo.data.source.n_train == 8 and dpo.loss.name == "dpo" and dpo.loss.normalize == "sum"
    aft = p.compose("train", "aft", ["method=aft", *p.hf("vft")], ["train", "align", "aft"])
    assert kind_of(aft) == "groups" and aft.data.prefs_path == f"{tmp_path}/prefs/groups_aft.jsonl"
    assert aft.loss.name == "aft" and aft.loss.constraint == "boundary"
    wdpo = p.compose("train", "wdpo", ["method=wdpo", *p.hf("vft")], ["train", "align", "wdpo"])
    assert wdpo.data.weight_field == "profile.pair_weight" and wdpo.data.pairing == "hard_negative"
    avg = p.compose("train", "dpo_avg", ["method=dpo_avg", *p.hf("vft")], ["train", "align", "dpo_avg"])
    assert avg.loss.normalize == "mean" and avg.loss.beta == 0.5

    sample = p.compose("sample", "sample", [*p.hf("vft"), "split=train"], ["sample", "sample"])
    assert "trainer" not in sample and sample.k == p.cfg.stages.sample.k and sample.data.source.n_train == 8
    ev = p.compose("eval", "eval/base", ["eval.candidates_path=c.jsonl"], ["evaluate"])
    assert ev.model.source == "tiny" and ev.eval.n_examples == p.cfg.eval.n_examples
    assert ev.eval.candidates_path == "c.jsonl"


def test_saved_command_recomposes_the_same_stage_config(pipeline, tmp_path):
    """<out_dir>/<stage>/command.txt re-runs the stage alone: its overrides give the same config."""
    p = pipeline
    cfg = p.compose("train", "aft", ["method=aft", *p.hf("vft"), f"paths.output_dir={tmp_path}/aft"],
                    ["train", "align", "aft"])
    argv = shlex.split((tmp_path / "aft" / "command.txt").read_text())
    assert argv[:3] == ["python", "-m", "lnrl.apps.train"]
    again = compose("train", overrides=argv[3:])
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


@pytest.mark.slow
def test_tiny_pipeline_writes_results_and_resumes(tmp_path):
    GlobalHydra.instance().clear()
    out = tmp_path / "demo"
    args = ["experiment=demo_tiny", f"out_dir={out}", f"paths.log_dir={tmp_path}/logs"]
    res = run_from_overrides(args)
    assert res["ran"] == ["vft", "sample", "candidates", "prefs", "aft", "dpo", "dpo_avg", "wdpo",
                          *(f"eval/{n}" for n in ("base", *METHODS))]
    saved = json.loads((out / "results.json").read_text())
    assert saved == {k: v for k, v in res.items() if k != "ran"}
    assert set(saved["methods"]) == set(METHODS)
    for name, m in saved["methods"].items():
        for metric in METRICS:
            assert isinstance(m[metric], float), (name, metric)
        assert 0 <= m["answer_acc"] <= 1 and 0 <= m["assessment_acc"] <= 1 and 0 <= m["degenerate_rate"] <= 1
        assert m["gen_len"] == 8  # a random model never stops before max_new_tokens
    for key in ("model", "data", "train_examples", "eval_examples", "val_nll_before", "val_nll_after",
                "answer_acc_before", "answer_acc_after", "seconds", "sizes"):
        assert saved[key] is not None, key
    assert saved["model"] == "tiny-llama" and saved["data"] == "gsm_symbolic"
    assert saved["train_examples"] == 8 and saved["eval_examples"] == 4
    assert saved["val_nll_after"] < saved["val_nll_before"]  # 2 VFT steps at lr 1e-3 already help
    assert saved["sizes"]["vft_steps"] == 2 and saved["sizes"]["sample_k"] == 3
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ("base", *METHODS))
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.ckpt"))  # stages keep hf_model/ exports, no Lightning checkpoints
    assert "data.prefs_path=" + str(out / "prefs" / "groups_aft.jsonl") in (out / "aft" / "command.txt").read_text()

    # Resume from the command line: only the missing stage runs; the others' outputs stay untouched.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json") if "wdpo" not in str(p.parent)}
    shutil.rmtree(out / "eval" / "wdpo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-m", "lnrl.apps.pipeline", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "== vft: done, skipped" in log and "== eval/wdpo: done, skipped" not in log
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["wdpo"] == saved["methods"]["wdpo"]  # greedy evaluation is deterministic
