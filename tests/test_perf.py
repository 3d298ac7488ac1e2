"""Every training run logs perf/tokens_per_s, perf/step_time_s, perf/peak_mem_gb (lnrl.callbacks.PerfMonitor)
and train/grad_norm, also with callbacks=none; values checked against quantities derived independently.

With gradient accumulation over 2 micro-batches, optimizer step s trains on loader batches 2s and 2s+1,
so the tokens it processed are the non-padding tokens of those two batches, recomputed here from the
datamodule's own loader (the order is a function of the seed alone). The gradient Lightning steps on is
that of L = (l_{2s} + l_{2s+1}) / 2; its norm before clipping, recomputed for step 0 from the
initial weights, is what train/grad_norm must read. Clipping at 1e-4 shows it is read before clipping.
"""

from __future__ import annotations

import csv
import resource

import pytest
import torch

from lnrl.callbacks import PerfMonitor

PERF = ("perf/tokens_per_s", "perf/step_time_s", "perf/peak_mem_gb")


def logged(run_dir) -> dict[int, dict[str, float]]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/tokens_per_s")]
    return {int(r["step"]): {k: float(v) for k, v in r.items() if v and k != "step"} for r in rows}


def test_perf_and_grad_norm_reach_the_logs_and_metrics_json(tiny_cfg, tmp_path):
    from lnrl.apps.train import build, train

    overrides = ["experiment=fixtures", "method=dpo", "method.reference=live", "logger=csv", "eval.enabled=false",
                 "trainer.max_steps=2", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1e-4",
                 "trainer.limit_val_batches=0", "data.batch_size=2"]
    cfg = tiny_cfg(overrides)
    assert cfg.callbacks in (None, {})  # callbacks=none (the fixtures experiment): perf is logged all the same
    metrics = train(cfg)
    assert all(k in metrics for k in (*PERF, "train/grad_norm"))
    rows = logged(tmp_path)
    assert sorted(rows) == [0, 1]

    _, dm, module = build(tiny_cfg(overrides))
    dm.setup("fit")
    batches = list(dm.train_dataloader())[:4]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    for step in (0, 1):
        r = rows[step]
        assert r["perf/tokens_per_s"] * r["perf/step_time_s"] == pytest.approx(tokens[2 * step] + tokens[2 * step + 1],
                                                                              rel=1e-5)
        assert 0 < r["perf/step_time_s"] < metrics["seconds"]
        # CPU: this process's peak resident set size, which only grows (the logger keeps float32: rel 1e-6).
        peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        assert 0.05 < r["perf/peak_mem_gb"] <= peak_now * (1 + 1e-6)

    module.configure_model()
    loss = sum(module.objective(b).loss for b in batches[:2]) / 2
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))
    assert rows[0]["train/grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    assert rows[0]["train/grad_norm"] > 1e-3  # far above the clip value: read before clipping


def test_a_configured_monitor_is_not_doubled(tiny_cfg):
    """callbacks=default lists a PerfMonitor; the module then adds none of its own."""
    from hydra.utils import instantiate

    from lnrl.apps.train import build
    from lnrl.utils import build_all

    cfg = tiny_cfg(["callbacks=default", "method=dpo", "experiment=fixtures", "callbacks=default"])
    callbacks = build_all(cfg.callbacks)
    assert sum(isinstance(c, PerfMonitor) for c in callbacks) == 1
    _, _, module = build(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    module.trainer = trainer
    assert module.configure_callbacks() == []
    module.trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
    assert [type(c) for c in module.configure_callbacks()] == [PerfMonitor]
