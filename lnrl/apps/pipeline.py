"""The main job (`make demo`): VFT -> sample -> preference records -> AFT / DPO / DPO(mean) / weighted
DPO -> evaluate -> results table and plot.

    python -m lnrl.apps.pipeline                              # the embedded default (CPU, < 20 min)
    python -m lnrl.apps.pipeline data=gsm8k trainer=gpu       # passed through to every stage
    python -m lnrl.apps.pipeline stages.vft.trainer.max_steps=200 stages.sample.k=8 out_dir=outputs/big

Every stage is an ordinary Hydra app composed from the same conf tree (`lnrl-train`, `lnrl-sample`,
`lnrl-prefs`, `lnrl-eval`) and writes into `<out_dir>/<stage>/`, which the next stage reads. A
stage whose outputs exist is skipped, so a killed run resumes where it stopped; the command that
re-runs a stage alone is saved as `<out_dir>/<stage>/command.txt`. docs/pipeline.md has the details.

A stage's config = its own yaml + the pipeline's shared nodes (model, data, trainer, eval, seed;
forwarded where they differ from the stage's defaults) + the `stages.<section>` overrides of
pipeline.yaml (nested keys are flattened into `a.b=value` overrides, so `logger: csv` selects a
group option and `trainer: {max_steps: 8}` sets a field) + what the wiring fixes: which model it
loads (the VFT export after VFT), where it reads and writes. Override writing: lnrl.overrides;
the results table and plot: lnrl.reporting.results.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lnrl.apps import CONF
from lnrl.overrides import dedupe, hydra_context, override, shared_overrides, to_overrides
from lnrl.reporting.results import collect_results, run_sizes, write_results
from lnrl.utils import write_json  # importing lnrl.utils registers the config resolvers

log = logging.getLogger(__name__)

SHARED = ("model", "data", "trainer", "eval")  # config groups the pipeline passes to every stage that has them
ENTRY = {"train": "lnrl.apps.train", "sample": "lnrl.apps.sample", "prefs": "lnrl.apps.prefs",
         "eval": "lnrl.apps.evaluate"}


class Pipeline:
    def __init__(self, cfg: DictConfig, choices: Mapping[str, str]):
        self.cfg, self.choices = cfg, dict(choices)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # Stage sections resolved in the pipeline's context (${out_dir} etc.).
        self.sections = OmegaConf.to_container(cfg.stages, resolve=True)
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.ran: list[str] = []

    def compose(self, config_name: str, stage: str, wiring: list[str], sections: Sequence[str]) -> DictConfig:
        """A stage's config: shared nodes, then stage sections, then the wiring (module docstring)."""
        # Shared nodes the stage has and the wiring does not set itself (the alignment stages load model=hf).
        wired = {o.split("=", 1)[0] for o in wiring}
        plain = compose(config_name)
        keys = [k for k in (*SHARED, "seed") if k in plain and k in self.cfg and k not in wired]
        groups = [f"{k}={self.choices[k]}" for k in keys if k in SHARED]
        default = compose(config_name, overrides=[*groups, *(o for o in wiring if o.split("=", 1)[0] in SHARED)])
        section_overrides = [o for s in sections for o in to_overrides(self.sections.get(s))]
        overrides = dedupe([*groups, *shared_overrides(self.cfg, default, keys), *section_overrides, *wiring])
        cfg = compose(config_name, overrides=overrides)
        stage_dir = self.out / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        # What re-runs this stage alone (`python -m lnrl.apps.<app> ...`).
        command = " ".join(["python", "-m", ENTRY[config_name], *(shlex.quote(o) for o in overrides)])
        (stage_dir / "command.txt").write_text(command + "\n")
        return cfg

    def run(self, stage: str, done: Sequence[Path], fn) -> None:
        """Run fn() unless every file in `done` exists; time it."""
        if all(p.exists() for p in done):
            log.info("== %s: done, skipped (%s exists)", stage, done[0])
            return
        log.info("== %s", stage)
        start, cpu = time.time(), time.process_time()
        fn()
        self.timings[stage] = round(time.time() - start, 1)
        write_json(self.timings_path, self.timings)
        self.ran.append(stage)
        # CPU seconds next to wall seconds: on a shared machine their ratio shows the contention.
        log.info("== %s: %.0f s (%.0f CPU s)", stage, self.timings[stage], time.process_time() - cpu)

    # -- stages -------------------------------------------------------------------------------
    def hf(self, stage: str) -> list[str]:
        return ["model=hf", override("model.path", self.out / stage / "hf_model")]

    def train_stage(self, name: str, wiring: list[str], sections: Sequence[str]) -> None:
        from lnrl.apps.train import train

        run_dir = self.out / name

        def fn() -> None:
            extra = [override("paths.output_dir", run_dir)]
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.exists():  # killed mid-training: resume from the last checkpoint
                extra.append(override("ckpt_path", last))
            train(self.compose("train", name, [*wiring, *extra], sections))

        self.run(name, [run_dir / "metrics.json", run_dir / "hf_model" / "config.json"], fn)

    def sample_stage(self, name: str, split: str) -> None:
        from lnrl.apps.sample import sample

        wiring = [*self.hf("vft"), f"split={split}", override("paths.output_dir", self.out / name)]
        self.run(name, [self.out / name / "groups.jsonl"],
                 lambda: sample(self.compose("sample", name, wiring, ["sample", name])))

    def prefs_stage(self) -> None:
        from lnrl.apps.prefs import prefs

        wiring = [*self.hf("vft"), override("input", self.out / "sample" / "groups.jsonl"),
                  override("paths.output_dir", self.out / "prefs")]
        self.run("prefs", [self.out / "prefs" / "stats.json"],
                 lambda: prefs(self.compose("prefs", "prefs", wiring, ["prefs"])))

    def eval_stage(self, name: str) -> None:
        from lnrl.apps.evaluate import evaluate

        model = [] if name == "base" else self.hf(name)
        stage = f"eval/{name}"
        wiring = [*model, override("eval.candidates_path", self.out / "candidates" / "groups.jsonl"),
                  override("paths.output_dir", self.out / stage)]
        self.run(stage, [self.out / stage / "metrics.json"],
                 lambda: evaluate(self.compose("eval", stage, wiring, ["evaluate"])))

    def __call__(self) -> dict:
        start = time.time()
        methods = list(self.cfg.methods)
        self.train_stage("vft", ["method=vft"], ["train", "vft"])
        self.sample_stage("sample", "train")
        self.sample_stage("candidates", "eval")
        self.prefs_stage()
        for m in methods:  # a method config name (conf/method/<m>.yaml); its run dir and section share the name
            self.train_stage(m, [f"method={m}", *self.hf("vft")], ["train", "align", m])
        for name in ["base", "vft", *methods]:
            self.eval_stage(name)
        results = self.results(["vft", *methods], wall=time.time() - start)
        self.report(results)
        return results

    # -- results ------------------------------------------------------------------------------
    def results(self, names: Sequence[str], wall: float) -> dict:
        return collect_results(self.out, names, timings=self.timings, sizes=run_sizes(self.sections, self.cfg),
                               wall=wall)

    def report(self, results: dict) -> None:
        table = write_results(self.out, results)
        print("\n" + table + "\n")
        print(f"results: {self.out / 'results.json'}, {self.out / 'results.md'}, {self.out / 'results.png'}")


def run_pipeline(cfg: DictConfig, choices: Mapping[str, str]) -> dict:
    """Run (or resume) every stage; returns results.json's content plus `ran` (stages run now)."""
    with hydra_context():
        pipe = Pipeline(cfg, choices)
        results = pipe()
    return {**results, "ran": pipe.ran}


def run_from_overrides(overrides: Sequence[str]) -> dict:
    """The pipeline as `python -m lnrl.apps.pipeline <overrides>` runs it, from Python (tests)."""
    with hydra_context():
        cfg = compose("pipeline", overrides=list(overrides), return_hydra_config=True)
        return run_pipeline(cfg, OmegaConf.to_container(cfg.hydra.runtime.choices))


@hydra.main(version_base="1.3", config_path=CONF, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg, HydraConfig.get().runtime.choices)


if __name__ == "__main__":
    main()
