"""Learning-rate schedules, built from `conf/scheduler/*.yaml` as partial factories (`_partial_: true`):
the module calls `factory(optimizer, total_steps=...)` once the Trainer knows the number of steps.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup to the optimizer's lr, then cosine decay to min_lr_ratio * lr (constant when
    min_lr_ratio == 1). Warmup lasts warmup_steps when > 0, else round(warmup_ratio * total_steps).
    Stepped once per optimizer step."""
    warmup = int(warmup_steps or round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
