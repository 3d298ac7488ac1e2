"""lnrl-export: a Lightning checkpoint (one .ckpt file or a sharded checkpoint directory) -> a
`save_pretrained` directory that `model=hf model.path=<dir>` loads.

    lnrl-export outputs/train/runs/<run>/checkpoints/last.ckpt                # -> .../checkpoints/last_hf
    lnrl-export <run>/checkpoints/step100.ckpt -o exports/step100
    lnrl-eval model=hf model.path=exports/step100 data=gsm_symbolic            # then evaluate it

The model config comes from the checkpoint (`lnrl_model_cfg`, written by LnrlModule.on_save_checkpoint;
else the saved hyper-parameters), or from the run's `.hydra/config.yaml`. Only the policy (`model.*`
keys) is exported; a live DPO reference or optimizer states are left behind.
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

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
        meta = torch.load(meta_path, map_location="cpu", weights_only=False) if meta_path.is_file() else {}
        return state, meta
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
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
                     f"in the checkpoint and no {hydra_cfg}; pass --model-source/--model-path")


def hf_config(model_cfg: Mapping[str, Any], vocab_size: int | None = None):
    """The transformers config of the model an lnrl `model` config describes (no weights loaded)."""
    from transformers import AutoConfig

    from lnrl.models import build_tiny, embedded_path

    source = model_cfg.get("source", "embedded")
    if source == "tiny":
        with torch.device("meta"):
            return build_tiny(model_cfg, vocab_size).config
    if source == "embedded":
        return AutoConfig.from_pretrained(embedded_path(model_cfg.get("cache_dir")))
    if source == "hf":
        return AutoConfig.from_pretrained(str(model_cfg["path"]))
    raise ValueError(f"unknown model.source={source!r}; expected embedded, hf or tiny")


def save_hf(state: Mapping[str, torch.Tensor], config, out_dir: str | Path, tokenizer=None,
            generation_config=None) -> Path:
    """Write `state` (transformers keys) as a save_pretrained directory for a model of `config`.

    The model is built on the meta device and the tensors are assigned, not copied, so exporting costs
    no second copy of the weights.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config)
    _, unexpected = model.load_state_dict(dict(state), strict=False, assign=True)
    model.tie_weights()  # tied head/embedding: assign replaced one of them; tie again
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if unexpected or still_meta:
        raise KeyError(f"weights do not fit {type(model).__name__}: missing {still_meta[:5]}, "
                       f"unexpected {unexpected[:5]}")
    if generation_config is not None:
        model.generation_config = copy.deepcopy(generation_config)
    out = Path(out_dir)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path | None = None,
                      model_cfg: Mapping[str, Any] | None = None, tokenizer: bool = True) -> Path:
    """Checkpoint (file or sharded directory) -> save_pretrained directory; returns the directory.

    Default out_dir: next to the checkpoint, `<name>_hf` (`last.ckpt` -> `last_hf`).
    """
    ckpt_path = Path(ckpt_path)
    state, meta = read_checkpoint(ckpt_path)
    weights = policy_state(state)
    cfg = dict(model_cfg) if model_cfg is not None else model_config_of(ckpt_path, meta)
    embed = next((v for k, v in weights.items() if k.endswith("embed_tokens.weight")), None)
    config = hf_config(cfg, vocab_size=embed.shape[0] if embed is not None else None)
    tok = None
    if tokenizer:
        from lnrl.models import load_tokenizer

        tok = load_tokenizer(cfg)
    out = Path(out_dir) if out_dir is not None else ckpt_path.with_name(ckpt_path.stem + "_hf")
    save_hf(weights, config, out, tokenizer=tok)
    log.info("exported %s (step %s) -> %s", ckpt_path, meta.get("global_step"), out)
    return out


def export_module(trainer, module, tokenizer, out_dir: str | Path) -> Path | None:
    """Write the policy of a (possibly sharded) LnrlModule after fit; rank 0 writes and gets the dir.

    A collective under FSDP: every rank must call it (each holds a shard; they gather to rank 0).
    """
    from lnrl.distributed import full_state_dict, is_sharded

    out = Path(out_dir)
    root = trainer.strategy.model if trainer.strategy.model is not None else module  # FSDP1 wraps the module
    if not is_sharded(root):
        if not trainer.is_global_zero:
            return None
        module.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    state = full_state_dict(root)  # every rank takes part; rank 0 receives the full tensors
    if not trainer.is_global_zero:
        return None
    return save_hf(policy_state(state), module.model.config, out, tokenizer=tokenizer,
                   generation_config=getattr(module.model, "generation_config", None))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lnrl-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("-o", "--out", help="output directory (default: <checkpoint>_hf next to it)")
    parser.add_argument("--model-source", choices=("embedded", "hf", "tiny"),
                        help="override the model config found in the checkpoint")
    parser.add_argument("--model-path", help="with --model-source hf: the base model's directory or hub id")
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model_source == "hf" and not args.model_path:
        parser.error("--model-source hf needs --model-path (the base model's directory or hub id)")
    cfg = None
    if args.model_source:
        cfg = {"source": args.model_source, "path": args.model_path}
    # The directory on stdout (and no return value: console scripts sys.exit() what main returns).
    print(export_checkpoint(args.checkpoint, args.out, model_cfg=cfg, tokenizer=not args.no_tokenizer))


if __name__ == "__main__":
    main()
