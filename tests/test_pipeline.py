"""The main job: stage configs composed from one conf tree, then the whole pipeline on the tiny model."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lnrl.apps.pipeline import Pipeline, run_from_overrides
from lnrl.data.records import read_groups
from lnrl.overrides import dedupe, flatten, format_value
from lnrl.reporting import METRICS

METHODS = ("vft", "aft", "dpo", "dpo_avg", "wdpo")
SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


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
    vft = p.compose("train", "seed42/vft", ["method=vft", "seed=42"], ["train", "vft"])
    assert vft.model.source == "tiny" and vft.data.source.n_train == 8 and kind_of(vft) == "sft"
    assert vft.trainer.max_steps == p.cfg.stages.vft.trainer.max_steps  # the stage's section wins
    assert vft.logger.csv is not None and not vft.eval.enabled and vft.callbacks in (None, {})
    assert vft.seed == 42 and vft.data.source.split_by == "instance" and not vft.data.gold_as_chosen

    # every alignment method reads the one records file of its seed, from that seed's VFT model
    dpo = p.compose("train", "seed42/dpo", p.align_wiring(42, "dpo", 1), ["train", "align", "dpo"])
    assert dpo.model.source == "hf" and dpo.model.path == str(tmp_path / "seed42" / "vft" / "hf_model")
    assert dpo.optim.lr == 0.5 and dpo.trainer.max_steps == p.cfg.stages.align.trainer.max_steps
    assert kind_of(dpo) == "pairs" and dpo.data.prefs_path == f"{tmp_path}/seed42/prefs/groups.jsonl"
    assert dpo.data.source.n_train == 8 and dpo.loss.name == "dpo" and dpo.loss.normalize == "sum"
    aft = p.compose("train", "seed42/aft", p.align_wiring(42, "aft", 1), ["train", "align", "aft"])
    assert kind_of(aft) == "groups" and aft.data.prefs_path == dpo.data.prefs_path
    assert aft.loss.name == "aft" and aft.loss.constraint == "boundary"
    wdpo = p.compose("train", "seed42/wdpo", p.align_wiring(42, "wdpo", 1), ["train", "align", "wdpo"])
    assert wdpo.data.weight_field == "profile.pair_weight" and wdpo.data.pairing == "hard_negative"
    # round 2 of a method: its own records, sampled from its round-1 policy
    assert p.policy(42, "dpo", 2) == "seed42/round2/dpo/train" and p.records(42, "dpo", 2) == "seed42/round2/dpo"
    assert override_value(p.align_wiring(42, "dpo", 2), "model.path") == str(tmp_path / "seed42/dpo/hf_model")

    sample = p.compose("sample", "seed42/sample", [*p.hf("seed42/vft"), "split=train", "seed=42"],
                       ["sample", "sample"])
    assert "trainer" not in sample and sample.k == p.cfg.stages.sample.k and sample.data.source.n_train == 8
    ev = p.compose("eval", "eval/base", ["eval.candidates_path=c.jsonl"], ["evaluate"])
    assert ev.model.source == "tiny" and ev.eval.n_examples == p.cfg.eval.n_examples
    assert ev.eval.candidates_path == "c.jsonl"


def override_value(overrides, key):
    return next(o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key)


def test_matched_beta_is_dpo_beta_times_mean_pair_length(pipeline, tmp_path):
    """dpo_avg (mean log-likelihoods) at beta equals summed DPO at beta / L: it runs at dpo's beta x L, L the
    mean pair length of its records (prefs/stats.json). dpo's beta is 0.1; L = 52.5 -> 5.25."""
    p = pipeline
    (tmp_path / "seed42" / "prefs").mkdir(parents=True)
    (tmp_path / "seed42" / "prefs" / "stats.json").write_text(json.dumps({"mean_pair_tokens": {"all": 52.5}}))
    wiring = p.align_wiring(42, "dpo_avg", 1)
    assert override_value(wiring, "loss.beta") == "5.25"
    assert p.notes["seed42/dpo_avg"] == {"beta": 5.25, "matched_to": "dpo", "reference_beta": 0.1,
                                         "mean_pair_tokens": 52.5}
    cfg = p.compose("train", "seed42/dpo_avg", wiring, ["train", "align", "dpo_avg"])
    assert cfg.loss.beta == 5.25 and cfg.loss.normalize == "mean"
    assert "loss.beta" not in {o.split("=")[0] for o in p.align_wiring(42, "dpo", 1)}


def test_saved_command_recomposes_the_same_stage_config(pipeline, tmp_path):
    """<out_dir>/<stage>/command.txt re-runs the stage alone: its overrides give the same config."""
    p = pipeline
    cfg = p.compose("train", "seed42/aft", [*p.align_wiring(42, "aft", 1), f"paths.output_dir={tmp_path}/aft"],
                    ["train", "align", "aft"])
    argv = shlex.split((tmp_path / "seed42" / "aft" / "command.txt").read_text())
    assert argv[:3] == ["python", "-m", "lnrl.apps.train"]
    again = compose("train", overrides=argv[3:])
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


@pytest.mark.slow
def test_tiny_pipeline_writes_results_and_resumes(tmp_path):
    GlobalHydra.instance().clear()
    out = tmp_path / "demo"
    args = ["experiment=demo_tiny", f"out_dir={out}", f"paths.log_dir={tmp_path}/logs"]
    res = run_from_overrides(args)
    methods = METHODS[1:]
    assert res["ran"] == ["seed42/vft", "candidates", "seed42/sample", "seed42/prefs",
                          *(f"seed42/{m}" for m in methods), "seed42/eval/vft", "eval/base",
                          *(f"seed42/eval/{m}" for m in methods)]
    saved = json.loads((out / "results.json").read_text())
    assert saved == {k: v for k, v in res.items() if k != "ran"}
    comp = saved["comparison"]
    assert set(comp["models"]) == {"base", *METHODS} and comp["baseline"] == "vft"
    for name in METHODS:
        acc = comp["models"][name]["metrics"]["answer_acc"]
        assert acc["n_questions"] == 4 and acc["low"] <= acc["value"] <= acc["high"]
        assert comp["models"][name]["metrics"]["gen_len"]["value"] == 8  # a random model never stops early
        if name != "vft" and name != "base":
            d = comp["models"][name]["vs_baseline"]["answer_acc"]
            assert d["p_value"] is not None and d["test"]
    assert saved["setting"]["gold_as_chosen"] is True and saved["setting"]["seeds"] == [42]
    matched = saved["setting"]["matched_beta"]["seed42/dpo_avg"]
    assert matched["beta"] == pytest.approx(0.1 * matched["mean_pair_tokens"], abs=1e-3)
    assert saved["model"] == "tiny-llama" and saved["data"] == "gsm_symbolic"
    assert saved["train_examples"] == 8 and saved["eval_examples"] == 4
    assert saved["val_nll_after"] < saved["val_nll_before"]  # 2 VFT steps at lr 1e-3 already help
    assert saved["sizes"]["vft_steps"] == 2 and saved["sizes"]["sample_k"] == 3
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ("base", *METHODS)) and "[0.000, 0.000]" in table
    assert "Gold CoTs in the preference data: on" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.ckpt"))  # stages keep hf_model/ exports, no Lightning checkpoints
    records = out / "seed42" / "prefs" / "groups.jsonl"
    assert "data.prefs_path=" + str(records) in (out / "seed42" / "aft" / "command.txt").read_text()
    for f in ("generations.jsonl", "assessment.jsonl", "nll.jsonl"):
        assert (out / "seed42" / "eval" / "dpo" / f).exists()

    # Resume from the command line: only the missing stage runs; the others' outputs stay untouched.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json") if "wdpo" not in str(p.parent)}
    shutil.rmtree(out / "seed42" / "eval" / "wdpo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-m", "lnrl.apps.pipeline", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "== seed42/vft: done, skipped" in log and "== seed42/eval/wdpo: done, skipped" not in log
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = json.loads((out / "results.json").read_text())
    assert again["comparison"]["models"]["wdpo"] == saved["comparison"]["models"]["wdpo"]  # greedy eval is deterministic


@pytest.mark.slow
def test_two_seeds_and_two_rounds_on_tiny(tmp_path):
    """seeds=[1,2] rounds=2: each seed its own VFT chain; round 2 re-samples from the round-1 policy and
    trains from it; every round keeps its records and metrics; results pool the seeds."""
    GlobalHydra.instance().clear()
    out = tmp_path / "r"
    res = run_from_overrides(["experiment=demo_tiny", f"out_dir={out}", f"paths.log_dir={tmp_path}/logs",
                              "seeds=[1,2]", "rounds=2", "methods=[dpo]"])
    for s in (1, 2):
        r2 = out / f"seed{s}" / "round2" / "dpo"
        assert (r2 / "sample" / "groups.jsonl").exists() and (r2 / "prefs" / "stats.json").exists()
        assert (r2 / "train" / "metrics.json").exists() and (out / f"seed{s}" / "dpo" / "metrics.json").exists()
        cmd = (r2 / "train" / "command.txt").read_text()
        assert f"model.path={out}/seed{s}/dpo/hf_model" in cmd and f"data.prefs_path={r2}/prefs/groups.jsonl" in cmd
        assert f"model.path={out}/seed{s}/round2/dpo/train/hf_model" in (
            out / f"seed{s}" / "eval" / "dpo" / "command.txt").read_text()
    # the two seeds sampled different completions (seeded sampling), from the same questions
    a, b = (read_groups(out / f"seed{s}" / "sample" / "groups.jsonl") for s in (1, 2))
    assert [g.id for g in a] == [g.id for g in b] and [g.completions for g in a] != [g.completions for g in b]
    dpo = res["comparison"]["models"]["dpo"]["metrics"]["answer_acc"]
    assert dpo["n_seeds"] == 2 and len(dpo["per_seed"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason=f"needs the GSM8K training file at {SHARED_GSM8K} "
                    "(../shared beside the checkout)")
def test_study_gpu_preset_dry_run_on_cpu(tmp_path):
    """experiment=study_gpu composes for a GPU (hf model, bf16, GSM8K, 2 seeds); with the tiny model on CPU
    and dry_run=true every stage runs at its smallest size."""
    GlobalHydra.instance().clear()
    with initialize_config_module("lnrl.conf", version_base="1.3"):
        cfg = compose("pipeline", overrides=["experiment=study_gpu"])
    assert cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.data.source.name == "gsm8k" and list(cfg.seeds) == [1, 2] and cfg.model.dtype == "bfloat16"
    # Paper scale: every training question, VFT by epochs (its own section, which beats stages.train).
    assert cfg.data.source.n_train is None and cfg.stages.vft.trainer.max_steps == -1
    assert cfg.stages.vft.trainer.max_epochs == 3
    GlobalHydra.instance().clear()
    out = tmp_path / "gpu"
    res = run_from_overrides(["experiment=study_gpu", "model=tiny", "trainer=cpu", "dry_run=true",
                              f"data.path={SHARED_GSM8K}", "data.source.n_eval=8", "data.source.n_train=64",
                              # VFT's micro-batches of 32 GSM8K rows x 4 (accumulated) are most of the time on CPU
                              "stages.vft.data.batch_size=4", f"out_dir={out}",
                              f"paths.log_dir={tmp_path}/logs", "seeds=[1]"])
    assert res["setting"]["dry_run"] and set(res["comparison"]["models"]) == {"base", *METHODS}
    assert json.loads((out / "seed1" / "vft" / "metrics.json").read_text())["global_step"] == 2
