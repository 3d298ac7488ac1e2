"""Reading lnrl Lightning checkpoints: the policy's weights and the model config they were trained with."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lnrl.checkpoint_io import load_weights_only

PREFIX = "model."  # LnrlModule keeps the transformers model at self.model


def policy_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers model's weights from a LightningModule state dict: `model.` keys, prefix stripped."""
    out = {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    if not out:
        sample = ", ".join(list(state_dict)[:5])
        raise KeyError(f"no '{PREFIX}*' weights in the state dict (keys start: {sample}); is it an lnrl checkpoint?")
    return out


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(LightningModule state dict, the rest of the checkpoint) from a .ckpt file or a sharded directory.

    A sharded directory (ModelParallelStrategy / FSDPStrategy with sharded state) holds torch.distributed
    checkpoint shards plus `meta.pt` (step counters, hyper-parameters, lnrl_model_cfg); only the
    `state_dict` entry is read from the shards, so optimizer states are never loaded.
    Loads are weights-only (lnrl.checkpoint_io.load_weights_only): a checkpoint holding anything but
    tensors and plain data is refused unread, so a crafted one cannot run code.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir():
        from lightning.fabric.utilities.load import _METADATA_FILENAME
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        if not (path / ".metadata").is_file():
            raise ValueError(f"{path}: a directory but not a sharded checkpoint (no .metadata file)")
        # Loads into this process only (no process group), each tensor assembled from all shards.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            state = _load_state_dict_from_keys("state_dict", checkpoint_id=str(path))["state_dict"]
        meta_path = path / _METADATA_FILENAME
        meta = load_weights_only(meta_path, map_location="cpu") if meta_path.is_file() else {}
        return state, meta
    ckpt = load_weights_only(path, map_location="cpu", mmap=True)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt.pop("state_dict"), ckpt


def model_config_of(ckpt_path: str | Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The lnrl `model` config a checkpoint was trained with."""
    if meta.get("lnrl_model_cfg"):
        return dict(meta["lnrl_model_cfg"])
    hparams = meta.get("hyper_parameters") or {}
    if isinstance(hparams.get("model"), Mapping):
        return dict(hparams["model"])
    # <run dir>/checkpoints/<name>.ckpt: the run's composed Hydra config sits in <run dir>/.hydra.
    hydra_cfg = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(hydra_cfg)
        if "model" in cfg:
            return dict(OmegaConf.to_container(cfg.model, resolve=True))
    raise ValueError(f"{ckpt_path}: cannot tell which model it holds: no lnrl_model_cfg or hyper_parameters.model "
                     f"in the checkpoint and no {hydra_cfg}; give the model config explicitly "
                     f"(lnrl-export: --model-source/--model-path)")
