#!/usr/bin/env python
"""Training throughput and peak memory of one trainer config: `perf/tokens_per_s`, `perf/peak_mem_gb`.

    python scripts/bench_fsdp.py -- model=tiny trainer=fsdp2 trainer.accelerator=cpu trainer.devices=2
    python scripts/bench_fsdp.py --steps 30 -- trainer=fsdp2 trainer.devices=8 data.batch_size=8
    python scripts/bench_fsdp.py -- trainer=gpu trainer.strategy.activation_checkpointing=true ...

Runs `lnrl-train` (no evaluation, no checkpoints, no logger) for --steps optimizer steps with a
callback that times every step after --warmup steps. tokens/s counts the non-padding tokens of the
global batch (all ranks) per second of wall time; peak memory is the largest over ranks: CUDA's
max_memory_allocated on GPU, the process's peak resident set size on CPU (which includes the Python
runtime and libraries, so it is an upper bound on what training needs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

SCRIPTS = Path(__file__).resolve().parent
PERF_FILE = "perf.json"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens in a batch of any kind (SFT rows, pairs, groups plus their gold rows)."""
    return int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask")))


class Throughput(pl.Callback):
    """Times training steps after `warmup_steps`; rank 0 writes perf.json into `out_dir`."""

    def __init__(self, out_dir: str, warmup_steps: int = 2):
        self.out_dir, self.warmup_steps = Path(out_dir), warmup_steps
        self.tokens, self.start, self.steps = 0, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup_steps and self.start is None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()
        if self.start is not None:
            self.tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.start if self.start is not None else float("nan")
        stats = torch.tensor([float(self.tokens), peak_memory_gb(pl_module.device)], dtype=torch.float64)
        tokens = trainer.strategy.reduce(stats[:1].clone().to(pl_module.device), reduce_op="sum")
        peak = trainer.strategy.reduce(stats[1:].clone().to(pl_module.device), reduce_op="max")
        if trainer.is_global_zero:
            perf = {"perf/tokens_per_s": float(tokens) / elapsed, "perf/peak_mem_gb": float(peak),
                    "perf/timed_steps": self.steps, "perf/seconds": elapsed, "world_size": trainer.world_size,
                    "device": pl_module.device.type}
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / PERF_FILE).write_text(json.dumps(perf, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps in all (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed (default 2)")
    parser.add_argument("--out", help="run dir (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*", help="lnrl-train overrides, after --")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_fsdp_")).resolve()
    cmd = [sys.executable, "-m", "lnrl.apps.train", f"hydra.run.dir={out}", "logger=none", "eval.enabled=false",
           "export_hf=false", "callbacks=none",
           "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "trainer.max_epochs=-1",
           f"trainer.max_steps={args.steps}", "+callbacks.perf._target_=bench_fsdp.Throughput",
           f"+callbacks.perf.out_dir={out}", f"+callbacks.perf.warmup_steps={args.warmup}", *args.overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not (out / PERF_FILE).is_file():
        sys.exit(f"bench run failed (rc {proc.returncode}); see {out}/train.log")
    perf = json.loads((out / PERF_FILE).read_text())
    print(f"overrides: {' '.join(args.overrides)}")
    for key in ("perf/tokens_per_s", "perf/peak_mem_gb", "perf/timed_steps", "world_size", "device"):
        print(f"{key}: {perf[key]:.4g}" if isinstance(perf[key], float) else f"{key}: {perf[key]}")
    return perf


if __name__ == "__main__":
    main()
