"""The main job (`make demo`): VFT -> sample -> preference records -> AFT / DPO / DPO(mean) / weighted
DPO -> evaluate -> results table and plot.

    python -m lnrl.pipeline                                   # the embedded default (CPU, < 20 min)
    python -m lnrl.pipeline data=gsm8k trainer=gpu            # passed through to every stage
    python -m lnrl.pipeline stages.vft.trainer.max_steps=200 stages.sample.k=8 out_dir=outputs/big

Every stage is an ordinary Hydra app composed from the same conf tree (`lnrl-train`, `lnrl-sample`,
`lnrl-prefs`, `lnrl-eval`) and writes into `<out_dir>/<stage>/`, which the next stage reads. A
stage whose outputs exist is skipped, so a killed run resumes where it stopped; the command that
re-runs a stage alone is saved as `<out_dir>/<stage>/command.txt`. docs/pipeline.md has the details.

A stage's config = its own yaml + the pipeline's shared nodes (model, data, trainer, eval, seed;
forwarded where they differ from the stage's defaults) + the `stages.<section>` overrides of
pipeline.yaml (nested keys are flattened into `a.b=value` overrides, so `logger: csv` selects a
group option and `trainer: {max_steps: 8}` sets a field) + what the wiring fixes: which model it
loads (the VFT export after VFT), where it reads and writes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lnrl.utils import write_json  # importing lnrl.utils registers the config resolvers

log = logging.getLogger(__name__)

SHARED = ("model", "data", "trainer", "eval")  # config groups the pipeline passes to every stage that has them
METRICS = ("answer_acc", "assessment_acc", "gen_len", "degenerate_rate")
ENTRY = {"train": "lnrl.train", "sample": "lnrl.sample", "prefs": "lnrl.prefs", "eval": "lnrl.evaluate"}


# ----------------------------------------------------------------------------- overrides

def format_value(v: Any) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{format_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if re.fullmatch(r"[A-Za-z_/.][\w./-]*", s) and s.lower() not in ("null", "true", "false", "inf", "nan"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"max_steps": 8}} -> {"trainer.max_steps": 8}; lists are leaves, empty dicts vanish."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def override(key: str, value: Any) -> str:
    return f"{key}={format_value(str(value) if isinstance(value, Path) else value)}"


def to_overrides(section: Mapping[str, Any] | None) -> list[str]:
    return [override(k, v) for k, v in flatten(dict(section or {})).items()]


def shared_overrides(pipe: DictConfig, default: DictConfig, keys: Sequence[str]) -> list[str]:
    """Fields of the pipeline's shared nodes whose (unresolved) value differs from the stage's
    default composition (made with the same group options), as overrides."""
    out = []
    for key in keys:
        mine, theirs = (flatten(OmegaConf.to_container(c[key], resolve=False) if isinstance(c[key], DictConfig)
                                else c[key], key) for c in (pipe, default))
        for k, v in mine.items():
            if k not in theirs:
                out.append(f"+{k}={format_value(v)}")
            elif theirs[k] != v:
                out.append(f"{k}={format_value(v)}")
    return out


def dedupe(overrides: Sequence[str]) -> list[str]:
    """Keep the last override of each key (later ones win, as Hydra applies them), in order."""
    last = {o.split("=", 1)[0].lstrip("+~"): i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0].lstrip("+~")] == i]


@contextmanager
def hydra_context() -> Iterator[None]:
    """compose() needs an initialized GlobalHydra: the running app's, or lnrl.conf's."""
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_module("lnrl.conf", version_base="1.3"):
            yield


# ----------------------------------------------------------------------------- the pipeline

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
        # What re-runs this stage alone (`python -m lnrl.<app> ...`).
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
        from lnrl.train import train

        run_dir = self.out / name

        def fn() -> None:
            extra = [override("paths.output_dir", run_dir)]
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.exists():  # killed mid-training: resume from the last checkpoint
                extra.append(override("ckpt_path", last))
            train(self.compose("train", name, [*wiring, *extra], sections))

        self.run(name, [run_dir / "metrics.json", run_dir / "hf_model" / "config.json"], fn)

    def sample_stage(self, name: str, split: str) -> None:
        from lnrl.sample import sample

        wiring = [*self.hf("vft"), f"split={split}", override("paths.output_dir", self.out / name)]
        self.run(name, [self.out / name / "groups.jsonl"],
                 lambda: sample(self.compose("sample", name, wiring, ["sample", name])))

    def prefs_stage(self) -> None:
        from lnrl.prefs import prefs

        wiring = [*self.hf("vft"), override("input", self.out / "sample" / "groups.jsonl"),
                  override("paths.output_dir", self.out / "prefs")]
        self.run("prefs", [self.out / "prefs" / "stats.json"],
                 lambda: prefs(self.compose("prefs", "prefs", wiring, ["prefs"])))

    def eval_stage(self, name: str) -> None:
        from lnrl.evaluate import evaluate

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
        def metrics(name: str) -> dict:
            return json.loads((self.out / "eval" / name / "metrics.json").read_text())

        def pick(m: dict) -> dict:
            return {k: _finite(m.get(f"val/{k}")) for k in (*METRICS, "nll", "truncated_rate")} | {
                "assessment_pairs": m.get("val/assessment_pairs")}

        base, vft = metrics("base"), metrics("vft")
        split = json.loads((self.out / "vft" / "data_split.json").read_text())
        vft_run = json.loads((self.out / "vft" / "metrics.json").read_text())
        prefs = json.loads((self.out / "prefs" / "stats.json").read_text())
        sample_stats = json.loads((self.out / "sample" / "stats.json").read_text())
        return {
            "model": base.get("model"),
            "data": split["split"].get("source"),
            "train_examples": split["split"].get("n_train"),
            "eval_examples": int(base.get("val/n_examples", 0)),
            "val_nll_before": _finite(base.get("val/nll")),
            "val_nll_after": _finite(vft.get("val/nll")),
            "answer_acc_before": _finite(base.get("val/answer_acc")),
            "answer_acc_after": _finite(vft.get("val/answer_acc")),
            "seconds": round(sum(self.timings.values()), 1),
            "seconds_this_run": round(wall, 1),
            "stage_seconds": self.timings,
            "sizes": {**self.sizes(), "vft_steps": vft_run.get("global_step"),
                      "sampled_completions": sample_stats.get("completions"),
                      "sample_correct_rate": sample_stats.get("correct_rate"),
                      "pairs": {rule: s.get("pairs") for rule, s in prefs.get("pairs", {}).items()}},
            "base": pick(base),
            "methods": {name: pick(metrics(name)) for name in names},
        }

    def sizes(self) -> dict:
        """The knobs that set the cost and the effect, as the stages used them (from the sections)."""
        s = self.sections
        pick = lambda sec, *path: _dig(s.get(sec, {}), path)  # noqa: E731
        return {
            "vft_max_steps": pick("vft", "trainer", "max_steps"), "vft_lr": pick("vft", "optim", "lr"),
            "align_max_steps": pick("align", "trainer", "max_steps"), "align_lr": pick("align", "optim", "lr"),
            "batch_size": OmegaConf.select(self.cfg, "data.batch_size"),
            "n_train": OmegaConf.select(self.cfg, "data.source.n_train"),
            "n_eval": OmegaConf.select(self.cfg, "data.source.n_eval"),
            "sample_questions": pick("sample", "n_questions"), "sample_k": pick("sample", "k"),
            "candidate_questions": pick("candidates", "n_questions"), "candidate_k": pick("candidates", "k"),
            "sample_max_new_tokens": pick("sample", "max_new_tokens"),
            "eval_max_new_tokens": OmegaConf.select(self.cfg, "eval.max_new_tokens"),
        }

    def report(self, results: dict) -> None:
        write_json(self.out / "results.json", results)
        table = results_table(results)
        (self.out / "results.md").write_text(
            f"# lnrl demo: {results['model']} on {results['data']}\n\n{table}\n\n"
            f"VFT: held-out gold NLL {_fmt(results['val_nll_before'])} -> {_fmt(results['val_nll_after'])}, "
            f"answer accuracy {_fmt(results['answer_acc_before'])} -> {_fmt(results['answer_acc_after'])} "
            f"({results['train_examples']} training / {results['eval_examples']} held-out questions).\n"
            f"Total stage time {results['seconds']:.0f} s. Sizes: `{json.dumps(results['sizes'])}`\n")
        plot_results(results, self.out / "results.png")
        print("\n" + table + "\n")
        print(f"results: {self.out / 'results.json'}, {self.out / 'results.md'}, {self.out / 'results.png'}")


def _dig(node: Any, path: Sequence[str]) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, Mapping) else None
    return node


def _finite(x: Any) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. no assessment pairs) is null."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def results_table(results: dict) -> str:
    rows = [("base", results["base"]), *results["methods"].items()]
    head = "| model | answer_acc | assessment_acc | gen_len | degenerate_rate | gold NLL |"
    lines = [head, "|" + "---|" * 6]
    for name, m in rows:
        gen_len = "n/a" if m["gen_len"] is None else f"{m['gen_len']:.1f}"
        lines.append(f"| {name} | {_fmt(m['answer_acc'])} | {_fmt(m['assessment_acc'])} | {gen_len} | "
                     f"{_fmt(m['degenerate_rate'])} | {_fmt(m['nll'])} |")
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    """One bar chart per metric, one bar per model (base, VFT, the alignment methods)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("base", results["base"]), *results["methods"].items()]
    names = [n for n, _ in rows]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, metric in zip(axes, METRICS):
        values = [m[metric] if m[metric] is not None else 0.0 for _, m in rows]
        ax.bar(names, values, color=["#999999"] + ["C0"] * (len(names) - 1))
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
        if metric != "gen_len":
            ax.set_ylim(0, 1)
    fig.suptitle(f"{results['model']} on {results['data']} ({results['eval_examples']} held-out questions)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_pipeline(cfg: DictConfig, choices: Mapping[str, str]) -> dict:
    """Run (or resume) every stage; returns results.json's content plus `ran` (stages run now)."""
    with hydra_context():
        pipe = Pipeline(cfg, choices)
        results = pipe()
    return {**results, "ran": pipe.ran}


def run_from_overrides(overrides: Sequence[str]) -> dict:
    """The pipeline as `python -m lnrl.pipeline <overrides>` runs it, from Python (tests)."""
    with hydra_context():
        cfg = compose("pipeline", overrides=list(overrides), return_hydra_config=True)
        return run_pipeline(cfg, OmegaConf.to_container(cfg.hydra.runtime.choices))


@hydra.main(version_base="1.3", config_path="conf", config_name="pipeline")
def main(cfg: DictConfig) -> None:
    run_pipeline(cfg, HydraConfig.get().runtime.choices)


if __name__ == "__main__":
    main()
