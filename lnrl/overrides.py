"""Hydra overrides: config values and nested nodes written in Hydra's override grammar, so one app can
compose another app's config (the main job composes every stage's) and save the command that
re-composes it."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf


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
    """Fields of `pipe`'s nodes `keys` whose (unresolved) value differs from `default`'s (a composition
    made with the same group options), as overrides: how one config's settings reach another app's."""
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
