"""Small helpers the entry points share: config resolvers, run dir, building objects from config."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# ${lnrl_package_dir:} lets configs point at files shipped inside the package (fixtures).
if not OmegaConf.has_resolver("lnrl_package_dir"):
    OmegaConf.register_new_resolver("lnrl_package_dir", lambda: str(PACKAGE_DIR))


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, written atomically: a crash leaves the old file (or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def output_dir() -> Path:
    """The current Hydra run dir (or the working directory outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()
