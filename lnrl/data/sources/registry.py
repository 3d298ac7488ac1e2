"""The source registry: a source is a function returning `SourceSplit`, registered by name.

`build_source({"name": ..., **options})` calls it; unknown names and options are refused with the
accepted ones. `normalize_answer` is the answer format every source writes into its `Example`s.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lnrl.data.records import Example

log = logging.getLogger(__name__)


@dataclass
class SourceSplit:
    train: list[Example]
    eval: list[Example]
    info: dict = field(default_factory=dict)  # how the split was made; the trainer writes it to the run dir


Loader = Callable[..., SourceSplit]
SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        if name in SOURCES:
            raise ValueError(f"source {name!r} is already registered")
        SOURCES[name] = fn
        return fn
    return deco


def build_source(cfg: dict, on_error: str | None = None) -> SourceSplit:
    """Load the source named by cfg["name"] with the remaining keys as options.

    on_error (from the datamodule) applies unless the source config sets its own.
    """
    cfg = dict(_plain(cfg))
    name = cfg.pop("name", None)
    if name not in SOURCES:
        raise ValueError(f"data.source.name={name!r}; registered sources: {sorted(SOURCES)}")
    if on_error is not None:
        cfg.setdefault("on_error", on_error)
    fn = SOURCES[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ValueError(f"data.source ({name}): unknown option(s) {unknown}; accepted: {sorted(params)}")
    split = fn(**cfg)
    split.info = {"source": name, **split.info, "n_train": len(split.train), "n_eval": len(split.eval)}
    if split.info.get("skipped"):
        log.warning("source %s: skipped %d bad record(s) (on_error=skip)", name, split.info["skipped"])
    return split


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return cfg


def normalize_answer(answer: str) -> str:
    """Canonical plain numbers ("1,080" -> "1080", "16.0" -> "16"); anything else stripped as written."""
    from lnrl.verify.answers import normalize_number

    answer = answer.strip()
    return normalize_number(answer) or answer
