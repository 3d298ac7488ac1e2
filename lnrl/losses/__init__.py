"""Losses over `SeqScores`, registered by name. No model, no Trainer.

    from lnrl.losses import LOSSES, build_loss
    dpo = build_loss("dpo", beta=0.1, normalize="mean")

Every module in this package is imported below, so a new file with a `@register_loss` class is
in `LOSSES` without editing this file.
"""

from __future__ import annotations

from lnrl.losses.registry import (
    KINDS,
    LOSSES,
    LossOutput,
    LossSpec,
    build_loss,
    check_compatible,
    discover,
    get_spec,
    register_loss,
)

discover(__name__)

__all__ = ["KINDS", "LOSSES", "LossOutput", "LossSpec", "build_loss", "check_compatible", "discover",
           "get_spec", "register_loss"]
