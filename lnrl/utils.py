"""Small helpers the entry points share: config resolvers, run dir, building objects from config."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lnrl.atomic import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# ${lnrl_package_dir:} lets configs point at files shipped inside the package (fixtures).
if not OmegaConf.has_resolver("lnrl_package_dir"):
    OmegaConf.register_new_resolver("lnrl_package_dir", lambda: str(PACKAGE_DIR))


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_required(cfg: DictConfig) -> None:
    """Raise ValueError naming the mandatory values (`???`) a composed config leaves unset; otherwise
    they fail one by one, deep inside whatever reads them first."""
    missing = _missing(cfg)
    if missing:
        raise ValueError(f"{', '.join(missing)}: required (??? in the config) and not set; set "
                         + " ".join(f"{k}=..." for k in missing) + " on the command line or in an experiment config")


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys holding ??? under node; interpolations are not followed (nor resolved)."""
    from omegaconf import ListConfig

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node)) if isinstance(node, ListConfig) else ()
    out = []
    for key in keys:
        full = f"{prefix}{key}" if isinstance(key, str) else f"{prefix.rstrip('.')}[{key}]"
        if OmegaConf.is_missing(node, key):
            out.append(full)
        elif not OmegaConf.is_interpolation(node, key):
            out += _missing(node._get_node(key), full + ".")
    return out


def build_datamodule(cfg: DictConfig, tokenizer):
    from hydra.utils import instantiate

    return instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.get("seed", 0), _convert_="all")


def build_all(node: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a dict-of-configs group (loggers, callbacks)."""
    from hydra.utils import instantiate

    if not node:
        return []
    return [instantiate(c, _convert_="all") for c in node.values() if c and "_target_" in c]


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (lnrl.atomic): a crash leaves the old file (or none)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, written atomically: a crash, or an error while producing the rows,
    leaves the old file (or none)."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def output_dir() -> Path:
    """The current Hydra run dir (or the working directory outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()
