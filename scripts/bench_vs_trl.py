#!/usr/bin/env python
"""DPO training throughput, lnrl against TRL 1.16's DPOTrainer on the same machine, in one run; AFT against k.

    .venv/bin/python scripts/bench_vs_trl.py                         # the table of docs/performance.md
    .venv/bin/python scripts/bench_vs_trl.py --steps 4 --warmup 1 --reps 1 --arms lnrl_cached,trl_precompute
    .venv/bin/python scripts/bench_vs_trl.py --arms aft_k2,aft_k4,aft_k8   # AFT step cost against k

Same model (the embedded SmolLM2-135M-Instruct), same pairs (--pairs GSM8K questions from
../shared/data/gsm8k, in TRL's conversational format: chosen = the question's gold CoT, rejected = the gold
CoT of the next question, a fluent wrong solution), same batch (--batch pairs), max length, fp32, AdamW at
lr 1e-6, gradient clipping at 1.0, one process, torch's default threads. Arms:

    trl_default      DPOTrainer with DPOConfig's defaults (live reference, activation checkpointing on)
    trl_nockpt       activation_checkpointing=False
    trl_precompute   precompute_ref_log_probs=True, activation_checkpointing=False
    lnrl_live        lnrl-train method=dpo method.reference=live (the CLI a user runs)
    lnrl_cached      lnrl-train method=dpo with reference scores cached by lnrl-refscores
    aft_k{2,4,8}     lnrl-train method=aft (boundary constraint, NLL on the gold row), --groups groups of k
                     completions per step (the gold CoT and k-1 other questions' CoTs as wrong members)

Every arm runs in its own process (peak RSS = that process's ru_maxrss: model, optimizer, Python and
libraries) for --steps optimizer steps; a step's time is the wall time between consecutive step ends (data
loading, forward, backward, optimizer: what a run spends), the first --warmup steps are dropped. --reps
rounds run every arm once each, rotating the order, so load from elsewhere spreads over the arms; the
figure of an arm is its median over rounds. CPU s/step (the process's CPU time over the same steps, all
threads) is the steadier figure when the host is not quiet. Reference scores (lnrl-refscores, TRL's
precompute pass) are computed before the timed steps on both sides; an arm's whole process time (loading,
reference pass, steps) is reported beside its step time. tokens/s = pairs/s x the mean real
tokens of a pair (prompt twice, both completions) under lnrl's tokenization, the same for every arm.
Run it on a quiet machine: another process on the cores changes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT)])}
TRL_ARMS = {"trl_default": {}, "trl_nockpt": {"activation_checkpointing": False},
            "trl_precompute": {"activation_checkpointing": False, "precompute_ref_log_probs": True}}
LNRL_ARMS = {"lnrl_live": ["method.reference=live"], "lnrl_cached": []}
DEFAULT_ARMS = [*TRL_ARMS, *LNRL_ARMS, "aft_k2", "aft_k4", "aft_k8"]
LR = 1e-6


# ------------------------------------------------------------------------------------------------ data

def gsm8k(n: int) -> list[dict]:
    if not GSM8K.exists():
        sys.exit(f"bench_vs_trl: {GSM8K} not found (the GSM8K training split beside the checkout)")
    with open(GSM8K) as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def write_pairs(rows: list[dict], path: Path) -> None:
    """TRL's conversational preference format: both frameworks read this very file."""
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            wrong = rows[(i + 1) % len(rows)]["answer"]
            f.write(json.dumps({"prompt": [{"role": "user", "content": row["question"]}],
                                "chosen": [{"role": "assistant", "content": row["answer"]}],
                                "rejected": [{"role": "assistant", "content": wrong}]}) + "\n")


def write_groups(rows: list[dict], k: int, path: Path) -> None:
    """lnrl group records: k completions a question, its gold CoT (correct) and k-1 others' (wrong)."""
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            final = row["answer"].rsplit("####", 1)[-1].strip()
            members = [{"text": row["answer"], "pred": final, "correct": True, "truncated": False}]
            for j in range(1, k):
                other = rows[(i + j) % len(rows)]["answer"]
                members.append({"text": other, "pred": other.rsplit("####", 1)[-1].strip(), "correct": False,
                                "truncated": False})
            f.write(json.dumps({"id": f"gsm8k/{i}", "question": row["question"], "answer": final,
                                "gold_solution": row["answer"], "completions": members}) + "\n")


def pair_tokens(path: Path, max_length: int) -> float:
    """Mean real tokens of a pair (prompt + chosen, prompt + rejected) as lnrl encodes the file."""
    from lnrl.data.tokenize import encode_chat, encode_completion
    from lnrl.data.trl_format import read_trl_prefs
    from lnrl.models import load_tokenizer

    tok = load_tokenizer({"source": "embedded"})
    total = []
    for r in read_trl_prefs(str(path)):
        p = len(encode_chat(tok, list(r.prompt)))
        total.append(sum(min(max_length, p + len(encode_completion(tok, c))) for c in (r.chosen, r.rejected)))
    return statistics.fmean(total)


# ---------------------------------------------------------------------------------------------- workers

class Stamps:
    """Wall and process CPU time at every optimizer step's end, written with the peak RSS (both sides)."""

    def __init__(self):
        self.ends: list[float] = []
        self.cpu: list[float] = []

    def mark(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def write(self, path: Path) -> None:
        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        path.write_text(json.dumps({"ends": self.ends, "cpu": self.cpu, "peak_rss_gb": peak_rss_gb}))


def step_timer(path: str):
    """A Lightning callback stamping every optimizer step's end (lnrl arms; hydra target)."""
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        def __init__(self):
            self.stamps = Stamps()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.stamps.mark()

        def on_train_end(self, trainer, pl_module):
            self.stamps.write(Path(path))

    return StepTimer()


def trl_worker(arm: str, data: Path, out: Path, args) -> None:
    import datasets
    import trl
    from transformers import TrainerCallback

    from lnrl.models import load_model, load_tokenizer

    datasets.disable_progress_bars()
    stamps = Stamps()

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **kw):
            stamps.mark()

    tok = load_tokenizer({"source": "embedded"})
    model = load_model({"source": "embedded"})
    config = trl.DPOConfig(output_dir=str(out.parent / f"trl_{arm}"), per_device_train_batch_size=args.batch,
                           max_steps=args.steps, learning_rate=LR, max_length=args.max_length, report_to=[],
                           use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, seed=0,
                           disable_tqdm=True, **TRL_ARMS[arm])
    train = datasets.load_dataset("json", data_files=str(data), split="train")
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=train, processing_class=tok,
                             callbacks=[Timer()])
    trainer.train()
    stamps.write(out)


def lnrl_overrides(arm: str, data: Path, args) -> list[str]:
    common = ["model=smollm2_135m", "trainer=cpu", f"trainer.max_steps={args.steps}", "trainer.max_epochs=1000",
              "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "callbacks=none",
              "logger=csv", "eval.enabled=false", f"optim.lr={LR}", f"data.max_length={args.max_length}",
              "data.source.n_eval=4"]
    if arm.startswith("aft_k"):
        return common + ["method=aft", f"data.prefs_path={data}", f"data.batch_size={args.groups}"]
    return common + ["method=dpo", f"data.prefs_path={data}", "data.prefs_format=trl",
                     f"data.batch_size={args.batch}", *LNRL_ARMS[arm]]


def run_arm(arm: str, data: Path, work: Path, args) -> dict:
    out = work / f"{arm}.json"
    out.unlink(missing_ok=True)
    if arm in TRL_ARMS:
        cmd = [PY, __file__, "--worker", arm, "--data", str(data), "--out", str(out), "--steps", str(args.steps),
               "--batch", str(args.batch), "--max-length", str(args.max_length)]
    else:
        cmd = [PY, "-m", "lnrl.apps.train", *lnrl_overrides(arm, data, args),
               f"paths.output_dir={work / arm}", f"paths.log_dir={work / arm}",
               "+callbacks.timer._target_=bench_vs_trl.step_timer", f"+callbacks.timer.path={out}"]
    start = time.perf_counter()
    res = subprocess.run(cmd, env=ENV, cwd=work, capture_output=True, text=True)
    if res.returncode != 0 or not out.exists():
        sys.exit(f"bench_vs_trl: arm {arm} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    got = json.loads(out.read_text())
    ends = got["ends"]
    if len(ends) != args.steps:
        sys.exit(f"bench_vs_trl: arm {arm} recorded {len(ends)} step ends, expected {args.steps}")
    per_step = lambda t: (t[-1] - t[args.warmup - 1]) / (args.steps - args.warmup)  # noqa: E731
    return {"step_s": per_step(ends), "cpu_step_s": per_step(got["cpu"]), "peak_rss_gb": got["peak_rss_gb"],
            "process_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------- report

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    ap.add_argument("--pairs", type=int, default=64, help="GSM8K questions (pairs, and groups for AFT)")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--groups", type=int, default=2, help="AFT groups per step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--worker"), ap.add_argument("--data"), ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        return trl_worker(args.worker, Path(args.data), Path(args.out), args)
    if not 1 <= args.warmup < args.steps:
        sys.exit("bench_vs_trl: need 1 <= --warmup < --steps")
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in DEFAULT_ARMS]
    if unknown:
        sys.exit(f"bench_vs_trl: unknown arms {unknown}; expected some of {DEFAULT_ARMS}")

    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        work = Path(tmp)
        rows = gsm8k(args.pairs)
        pairs, cached = work / "pairs.jsonl", work / "pairs_ref.jsonl"
        write_pairs(rows, pairs)
        data = {a: pairs for a in arms}
        if "lnrl_cached" in arms:
            start = time.perf_counter()
            subprocess.run([PY, "-m", "lnrl.apps.refscores", f"input={pairs}", f"output={cached}",
                            f"data.max_length={args.max_length}", "data.prefs_format=trl"],
                           env=ENV, cwd=work, check=True, capture_output=True)
            print(f"lnrl-refscores over {args.pairs} pairs: {time.perf_counter() - start:.0f} s (not in the steps)")
            data["lnrl_cached"] = cached
        for a in arms:
            if a.startswith("aft_k"):
                data[a] = work / f"groups_{a}.jsonl"
                write_groups(rows, int(a[5:]), data[a])
        tokens = pair_tokens(pairs, args.max_length)
        runs: dict[str, list[dict]] = {a: [] for a in arms}
        for rep in range(args.reps):
            order = arms[rep % len(arms):] + arms[: rep % len(arms)]
            for a in order:
                runs[a].append(run_arm(a, data[a], work, args))
                r = runs[a][-1]
                print(f"  rep {rep + 1}/{args.reps} {a:15s} {r['step_s']:7.2f} s/step  peak RSS "
                      f"{r['peak_rss_gb']:.2f} GB", flush=True)
    report(arms, runs, tokens, args)


def report(arms: list[str], runs: dict[str, list[dict]], tokens: float, args) -> None:
    med = {a: statistics.median(r["step_s"] for r in runs[a]) for a in arms}
    cpu = {a: statistics.median(r["cpu_step_s"] for r in runs[a]) for a in arms}
    rss = {a: max(r["peak_rss_gb"] for r in runs[a]) for a in arms}
    pair_arms = [a for a in arms if not a.startswith("aft_k")]
    print(f"\nDPO: {args.pairs} GSM8K pairs, batch {args.batch}, max_length {args.max_length}, fp32, "
          f"{args.steps} steps ({args.warmup} warm-up), median of {args.reps} rounds; {tokens:.0f} tokens a pair")
    print("| arm | s/step | CPU s/step | pairs/s | tokens/s | peak RSS (GB) | process s |\n"
          "|---|---|---|---|---|---|---|")
    for a in pair_arms:
        pps = args.batch / med[a]
        proc = statistics.median(r["process_s"] for r in runs[a])
        print(f"| {a} | {med[a]:.2f} | {cpu[a]:.2f} | {pps:.3f} | {pps * tokens:.0f} | {rss[a]:.2f} | {proc:.0f} |")
    ratios = [("lnrl_cached", "trl_default"), ("lnrl_cached", "trl_precompute"), ("lnrl_live", "trl_nockpt"),
              ("lnrl_live", "trl_default")]
    shown = [(x, y) for x, y in ratios if x in med and y in med]
    if shown:
        print("\n| ratio (pairs/s) | median | per round | per CPU second |\n|---|---|---|---|")
        for x, y in shown:
            per = [b["step_s"] / a["step_s"] for a, b in zip(runs[x], runs[y])]
            print(f"| {x} / {y} | {med[y] / med[x]:.2f}x | {', '.join(f'{p:.2f}' for p in per)} | "
                  f"{cpu[y] / cpu[x]:.2f}x |")
    aft = [a for a in arms if a.startswith("aft_k")]
    if aft:
        print(f"\nAFT: {args.groups} groups a step, k completions each plus the gold row (NLL)")
        print("| k | s/step | steps/s | vs smallest k | peak RSS (GB) |\n|---|---|---|---|---|")
        for a in aft:
            print(f"| {a[5:]} | {med[a]:.2f} | {1 / med[a]:.3f} | {med[a] / med[aft[0]]:.2f}x | {rss[a]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "tokens_per_pair": tokens, "runs": runs},
                                              indent=1))


if __name__ == "__main__":
    main()
