"""The main job (`make demo`, `make study`): VFT -> sample -> preference records -> AFT / DPO /
length-averaged DPO / weighted DPO -> evaluate every model on the same held-out questions -> results
table with intervals and paired tests, and a plot.

    python -m lnrl.apps.pipeline                              # the embedded default (CPU, < 10 min)
    python -m lnrl.apps.pipeline experiment=study             # 2 seeds, sizes that separate methods
    python -m lnrl.apps.pipeline data=gsm8k trainer=gpu       # passed through to every stage
    python -m lnrl.apps.pipeline seeds=[1,2,3] rounds=2 out_dir=outputs/big

Every stage is an ordinary Hydra app composed from the same conf tree (`lnrl-train`, `lnrl-sample`,
`lnrl-prefs`, `lnrl-eval`) and writes into a directory the next stage reads:

    <out_dir>/eval/base/                  the starting model, evaluated once
    <out_dir>/candidates/                 held-out candidate CoTs for assessment accuracy (first seed's VFT)
    <out_dir>/seed<s>/vft/                VFT on gold CoTs
    <out_dir>/seed<s>/sample/, prefs/     k samples per training question from VFT, graded; records + refs
    <out_dir>/seed<s>/<method>/           each alignment method, from the VFT model (round 1)
    <out_dir>/seed<s>/round<r>/<method>/{sample,prefs,train}/   rounds >= 2: from the method's latest policy
    <out_dir>/seed<s>/eval/<model>/       held-out evaluation of vft and every method (final round)

A stage whose outputs exist is skipped, so a killed run resumes where it stopped; the command that
re-runs a stage alone is saved as `command.txt` in its directory. docs/pipeline.md has the details.

A stage's config = its own yaml + the pipeline's shared nodes (model, data, trainer, eval; forwarded
where they differ from the stage's defaults) + the `stages.<section>` overrides of pipeline.yaml
(nested keys are flattened into `a.b=value` overrides) + what the wiring fixes: the seed, which model
it loads, where it reads and writes. Override writing: lnrl.overrides; results: lnrl.reporting.
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
# dry_run=true: every stage at the smallest size that still runs it, to check a config end to end (with
# gold CoTs as the chosen side, so a model that is never right still yields pairs).
DRY_RUN = {"vft": {"trainer": {"max_steps": 2}}, "align": {"trainer": {"max_steps": 2}},
           "train": {"data": {"gold_as_chosen": True}},
           "prefs": {"data": {"gold_as_chosen": True}},
           "sample": {"n_questions": 4, "k": 2, "max_new_tokens": 16},
           "candidates": {"n_questions": 4, "k": 2, "max_new_tokens": 16},
           "evaluate": {"eval": {"n_examples": 4, "max_new_tokens": 16, "nll_examples": 4}}}


class Pipeline:
    def __init__(self, cfg: DictConfig, choices: Mapping[str, str]):
        self.cfg, self.choices = cfg, dict(choices)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # Stage sections resolved in the pipeline's context (${out_dir} etc.).
        self.sections = OmegaConf.to_container(cfg.stages, resolve=True)
        if cfg.get("dry_run"):
            for section, caps in DRY_RUN.items():
                self.sections[section] = _merge(self.sections.get(section) or {}, caps)
        self.seeds = [int(s) for s in cfg.seeds]
        self.methods = [str(m) for m in cfg.methods]
        self.rounds = int(cfg.rounds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more distinct seeds")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}: must be >= 1")
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.ran: list[str] = []
        self.notes: dict[str, dict] = {}  # per stage: what the wiring decided (matched beta, ...)

    def overrides(self, config_name: str, wiring: list[str], sections: Sequence[str]) -> list[str]:
        """A stage's overrides: shared nodes, then stage sections, then the wiring (module docstring)."""
        # Shared nodes the stage has and the wiring does not set itself (the alignment stages load model=hf).
        wired = {o.split("=", 1)[0] for o in wiring}
        plain = compose(config_name)
        keys = [k for k in SHARED if k in plain and k in self.cfg and k not in wired]
        groups = [f"{k}={self.choices[k]}" for k in keys]
        default = compose(config_name, overrides=[*groups, *(o for o in wiring if o.split("=", 1)[0] in SHARED)])
        section_overrides = [o for s in sections for o in to_overrides(self.sections.get(s))]
        return dedupe([*groups, *shared_overrides(self.cfg, default, keys), *section_overrides, *wiring])

    def compose(self, config_name: str, stage: str, wiring: list[str], sections: Sequence[str]) -> DictConfig:
        """A stage's config (`overrides`), and its command.txt in the stage dir."""
        overrides = self.overrides(config_name, wiring, sections)
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

    # -- wiring -------------------------------------------------------------------------------
    def hf(self, run_dir: str) -> list[str]:
        """Load the model a training stage exported (<out_dir>/<run_dir>/hf_model)."""
        return ["model=hf", override("model.path", self.out / run_dir / "hf_model")]

    def policy(self, seed: int, method: str, round_: int) -> str:
        """The run dir of `method`'s policy after `round_` (round 0 = the VFT model it starts from)."""
        if round_ == 0:
            return f"seed{seed}/vft"
        return f"seed{seed}/{method}" if round_ == 1 else f"seed{seed}/round{round_}/{method}/train"

    def records(self, seed: int, method: str, round_: int) -> str:
        """The dir of the sample and prefs stages whose records round `round_` of `method` trains on."""
        return f"seed{seed}" if round_ == 1 else f"seed{seed}/round{round_}/{method}"

    # -- stages -------------------------------------------------------------------------------
    def train_stage(self, run_dir: str, wiring: list[str], sections: Sequence[str]) -> None:
        from lnrl.apps.train import train

        out = self.out / run_dir

        def fn() -> None:
            extra = [override("paths.output_dir", out)]
            last = out / "checkpoints" / "last.ckpt"
            if last.exists():  # killed mid-training: resume from the last checkpoint
                extra.append(override("ckpt_path", last))
            train(self.compose("train", run_dir, [*wiring, *extra], sections))

        self.run(run_dir, [out / "metrics.json", out / "hf_model" / "config.json"], fn)

    def sample_stage(self, stage: str, model_dir: str, split: str, section: str, seed: int) -> None:
        from lnrl.apps.sample import sample

        wiring = [*self.hf(model_dir), f"split={split}", f"seed={seed}", override("paths.output_dir", self.out / stage)]
        self.run(stage, [self.out / stage / "groups.jsonl"],
                 lambda: sample(self.compose("sample", stage, wiring, ["sample", section])))

    def prefs_stage(self, stage: str, sample_dir: str, ref_dir: str) -> None:
        from lnrl.apps.prefs import prefs

        wiring = [*self.hf(ref_dir), override("input", self.out / sample_dir / "groups.jsonl"),
                  override("paths.output_dir", self.out / stage)]
        self.run(stage, [self.out / stage / "stats.json"],
                 lambda: prefs(self.compose("prefs", stage, wiring, ["prefs"])))

    def eval_stage(self, stage: str, model_dir: str | None, near_miss_from: Path | None) -> None:
        from lnrl.apps.evaluate import evaluate

        model = [] if model_dir is None else self.hf(model_dir)
        wiring = [*model, override("eval.candidates_path", self.out / "candidates" / "groups.jsonl"),
                  override("paths.output_dir", self.out / stage)]
        if near_miss_from is not None:
            wiring.append(override("eval.near_miss_from", near_miss_from))
        self.run(stage, [self.out / stage / "metrics.json"],
                 lambda: evaluate(self.compose("eval", stage, wiring, ["evaluate"])))

    def align_wiring(self, seed: int, method: str, round_: int) -> list[str]:
        """A method's training wiring for one round: its start model, its records, and the matched beta."""
        recs = self.records(seed, method, round_)
        start = [f"seed={seed}", *self.hf(self.policy(seed, method, round_ - 1)),
                 override("data.prefs_path", self.out / recs / "prefs" / "groups.jsonl")]
        wiring = [f"method={method}", *start]
        matched = (self.cfg.get("match_beta") or {}).get(method)
        if matched:
            reference = [f"method={matched}", *start]
            wiring.append(override("loss.beta", self.matched_beta(method, str(matched), recs, wiring, reference)))
        return wiring

    def matched_beta(self, method: str, reference: str, recs: str, wiring: list[str], ref_wiring: list[str]) -> float:
        """Length-averaged DPO at beta equals summed DPO at beta / L (L = completion length), so a mean-
        normalised method runs at beta_ref * L, L = the mean pair length of its records (prefs stats):
        the two normalisations are compared at the same effective strength, not at a 20x weaker one."""
        me = compose("train", overrides=self.overrides("train", wiring, ["train", "align", method]))
        ref_cfg = compose("train", overrides=self.overrides("train", ref_wiring, ["train", "align", reference]))
        stats = json.loads((self.out / recs / "prefs" / "stats.json").read_text())
        length = stats["mean_pair_tokens"].get(me.data.pairing)
        if length is None:
            raise ValueError(f"match_beta.{method}: {recs}/prefs has no pairs under rule {me.data.pairing!r} to "
                             f"measure their length; drop match_beta.{method} or sample more questions")
        if (ref_cfg.loss.normalize, me.loss.normalize) != ("sum", "mean"):
            raise ValueError(f"match_beta.{method}={reference}: expects {reference} summed and {method} "
                             f"length-averaged, got {ref_cfg.loss.normalize} and {me.loss.normalize}")
        beta = round(float(ref_cfg.loss.beta) * length, 4)
        self.notes[f"{recs}/{method}"] = {"beta": beta, "matched_to": reference, "reference_beta": ref_cfg.loss.beta,
                                          "mean_pair_tokens": round(length, 2)}
        return beta

    def __call__(self) -> dict:
        start = time.time()
        first = self.seeds[0]
        for s in self.seeds:
            self.train_stage(f"seed{s}/vft", ["method=vft", f"seed={s}"], ["train", "vft"])
        # Held-out candidates for assessment accuracy: fixed for every model and seed.
        self.sample_stage("candidates", f"seed{first}/vft", "eval", "candidates", first)
        for s in self.seeds:
            self.sample_stage(f"seed{s}/sample", f"seed{s}/vft", "train", "sample", s)
            self.prefs_stage(f"seed{s}/prefs", f"seed{s}/sample", f"seed{s}/vft")
            for m in self.methods:  # a method config name (conf/method/<m>.yaml); its section shares the name
                for r in range(1, self.rounds + 1):
                    if r > 1:  # iterative rounds: new records from the method's latest policy
                        recs, prev = self.records(s, m, r), self.policy(s, m, r - 1)
                        self.sample_stage(f"{recs}/sample", prev, "train", "sample", s)
                        self.prefs_stage(f"{recs}/prefs", f"{recs}/sample", prev)
                    self.train_stage(self.policy(s, m, r), self.align_wiring(s, m, r), ["train", "align", m])
        # Evaluation: the first seed's VFT first, whose near misses mark the same subset for every model.
        near = self.out / f"seed{first}/eval/vft/generations.jsonl"
        self.eval_stage(f"seed{first}/eval/vft", f"seed{first}/vft", None)
        self.eval_stage("eval/base", None, near)
        for s in self.seeds:
            for name in ["vft", *self.methods]:
                if (s, name) != (first, "vft"):
                    model_dir = f"seed{s}/vft" if name == "vft" else self.policy(s, name, self.rounds)
                    self.eval_stage(f"seed{s}/eval/{name}", model_dir, near)
        results = self.results(wall=time.time() - start)
        self.report(results)
        return results

    # -- results ------------------------------------------------------------------------------
    def eval_dirs(self) -> dict[str, dict[int, Path]]:
        """{model: {seed: eval dir}}: base (seed-independent), vft and every method per seed."""
        dirs: dict[str, dict[int, Path]] = {"base": {self.seeds[0]: self.out / "eval" / "base"}}
        for name in ["vft", *self.methods]:
            dirs[name] = {s: self.out / f"seed{s}" / "eval" / name for s in self.seeds}
        return dirs

    def results(self, wall: float) -> dict:
        setting = {"seeds": self.seeds, "rounds": self.rounds, "methods": self.methods,
                   "gold_as_chosen": bool(OmegaConf.select(self.cfg, "data.gold_as_chosen")),
                   "matched_beta": self.notes, "dry_run": bool(self.cfg.get("dry_run"))}
        return collect_results(self.out, self.eval_dirs(), baseline="vft", timings=self.timings,
                               sizes=run_sizes(self.sections, self.cfg), setting=setting, wall=wall,
                               contrasts=list(self.cfg.get("contrasts") or []))

    def report(self, results: dict) -> None:
        table = write_results(self.out, results)
        print("\n" + table + "\n")
        print(f"results: {self.out / 'results.json'}, {self.out / 'results.md'}, {self.out / 'results.png'}")


def _merge(base: dict, caps: Mapping) -> dict:
    """`base` with the leaves of `caps` set (nested dicts merged)."""
    out = dict(base)
    for k, v in caps.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, Mapping) else v
    return out


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
