#!/usr/bin/env python
"""Training throughput, peak memory and MFU of one trainer config: `perf/tokens_per_s`, `perf/peak_mem_gb`,
`perf/mfu`.

    python scripts/bench_fsdp.py -- model=tiny trainer=fsdp2 trainer.accelerator=cpu trainer.devices=2
    python scripts/bench_fsdp.py --steps 30 -- trainer=fsdp2 trainer.devices=8 data.batch_size=8
    python scripts/bench_fsdp.py -- trainer=gpu trainer.strategy.activation_checkpointing=true ...
    python scripts/bench_fsdp.py --peak-tflops 0.19 -- trainer=cpu ...   # MFU against a peak you give

Runs `lnrl-train` (no evaluation, no checkpoints, no logger) for --steps optimizer steps with a
callback that times every step after --warmup steps. tokens/s counts the non-padding tokens of the
global batch (all ranks) per second of wall time; peak memory is the largest over ranks: CUDA's
max_memory_allocated on GPU, the process's peak resident set size on CPU (which includes the Python
runtime and libraries, so it is an upper bound on what training needs).

MFU (model FLOPs utilisation) = tokens/s x training FLOPs per token / the devices' peak FLOPs/s.
Training FLOPs per token follow the PaLM paper's count (arXiv 2204.02311, appendix B): 6 N for the
forward and backward matmuls of a model with N parameters (an embedding tied to the LM head counted
once), plus 12 x layers x hidden x T for attention over a row of T tokens (T: the mean real row length
of the timed batches). They count the policy's training only: a live reference's forward, a
recomputed activation (checkpointing) and the fast path's LM head skipped at prompt positions are not
model FLOPs, so MFU is comparable across those settings. The peak is dense bf16/fp16 tensor-core
FLOPs/s of the GPU (PEAK_TFLOPS, by device name), or --peak-tflops (the dtype the run computes in; on
CPU, cores x GHz x FLOPs a cycle); without either, MFU is not printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lnrl.callbacks import batch_tokens, peak_memory_gb

SCRIPTS = Path(__file__).resolve().parent
PERF_FILE = "perf.json"
# Dense (not sparse) bf16/fp16 tensor-core peak of one GPU, TFLOP/s, from NVIDIA's data sheets; matched
# by substring of torch.cuda.get_device_name, first match wins. Not Lightning's get_available_flops: its
# table lists the H200 at the sparse figure (2.0e15) and the H100 SXM at the dense one.
PEAK_TFLOPS = {"h200": 989.0, "h100 pcie": 756.0, "h100 nvl": 835.0, "h100": 989.0, "a100": 312.0, "l40s": 362.0,
               "a10g": 125.0}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Training FLOPs of one token (forward and backward): 6 N + 12 x layers x hidden x seq_len (PaLM)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def model_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(parameters, layers, hidden size) of a transformers model (or a peft wrapper of one); a parameter
    shared by two modules (tied embeddings) counts once, a sharded one by its full shape."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    return n, int(base.config.num_hidden_layers), int(base.config.hidden_size)


def peak_flops(device: torch.device, peak_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: --peak-tflops when given, else PEAK_TFLOPS by the CUDA device's name."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def mfu(tokens_per_s: float, per_token: float, peak: float | None, world_size: int) -> float | None:
    return None if not peak else tokens_per_s * per_token / (peak * world_size)


def batch_rows(batch: dict) -> int:
    return int(sum(v.shape[0] for k, v in batch.items() if k.endswith("attention_mask")))


class Throughput(pl.Callback):
    """Times training steps after `warmup_steps`; rank 0 writes perf.json into `out_dir`."""

    def __init__(self, out_dir: str, warmup_steps: int = 2, peak_tflops: float | None = None):
        self.out_dir, self.warmup_steps, self.peak_tflops = Path(out_dir), warmup_steps, peak_tflops
        self.tokens, self.rows, self.start, self.steps = 0, 0, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup_steps and self.start is None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()
        if self.start is not None:
            self.tokens += batch_tokens(batch)
            self.rows += batch_rows(batch)

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
            n_params, n_layers, hidden = model_shape(pl_module.model)
            per_token = flops_per_token(n_params, n_layers, hidden, self.tokens / max(self.rows, 1))
            tokens_per_s = float(tokens) / elapsed
            perf = {"perf/tokens_per_s": tokens_per_s, "perf/peak_mem_gb": float(peak),
                    "perf/mfu": mfu(tokens_per_s, per_token, peak_flops(pl_module.device, self.peak_tflops),
                                    trainer.world_size),
                    "perf/flops_per_token": per_token, "perf/timed_steps": self.steps, "perf/seconds": elapsed,
                    "world_size": trainer.world_size, "device": pl_module.device.type,
                    "device_name": torch.cuda.get_device_name(pl_module.device)
                    if pl_module.device.type == "cuda" else "cpu"}
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / PERF_FILE).write_text(json.dumps(perf, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps in all (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed (default 2)")
    parser.add_argument("--out", help="run dir (default: a temporary directory)")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of one device for MFU (default: by GPU "
                        "name, PEAK_TFLOPS; none on CPU)")
    parser.add_argument("overrides", nargs="*", help="lnrl-train overrides, after --")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_fsdp_")).resolve()
    cmd = [sys.executable, "-m", "lnrl.apps.train", f"hydra.run.dir={out}", "logger=none", "eval.enabled=false",
           "export_hf=false", "callbacks=none",
           "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "trainer.max_epochs=-1",
           f"trainer.max_steps={args.steps}", "+callbacks.perf._target_=bench_fsdp.Throughput",
           f"+callbacks.perf.out_dir={out}", f"+callbacks.perf.warmup_steps={args.warmup}",
           f"+callbacks.perf.peak_tflops={args.peak_tflops or 'null'}", *args.overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not (out / PERF_FILE).is_file():
        sys.exit(f"bench run failed (rc {proc.returncode}); see {out}/train.log")
    perf = json.loads((out / PERF_FILE).read_text())
    print(f"overrides: {' '.join(args.overrides)}")
    for key in ("perf/tokens_per_s", "perf/peak_mem_gb", "perf/mfu", "perf/flops_per_token", "perf/timed_steps",
                "world_size", "device_name"):
        value = perf[key]
        if key == "perf/mfu" and value is None:
            value = "n/a (no peak known for this device: give --peak-tflops)"
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return perf


if __name__ == "__main__":
    main()
