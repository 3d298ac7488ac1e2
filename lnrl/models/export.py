"""Writing a policy as a `save_pretrained` directory that `model=hf model.path=<dir>` loads: from a
checkpoint on disk (`export_checkpoint`, the lnrl-export app) or from a module after fit
(`export_module`, lnrl-train's `export_hf`). Only the policy (`model.*` keys) is written; a live DPO
reference or optimizer states are left behind. A LoRA policy (`model.lora`) is written with its adapters
merged into full weights, so sampling and evaluation load a plain model; with `model.lora.save_adapter`
the adapter alone also goes to `<out>/adapter/` in PEFT's format (lnrl.models.lora).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lnrl.models.checkpoint import model_config_of, policy_state, read_checkpoint
from lnrl.models.loading import hf_config, load_tokenizer
from lnrl.models.lora import has_lora_weights, is_lora, lora_spec, merge_lora_state, save_adapter

log = logging.getLogger(__name__)


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

    The model config comes from the checkpoint (lnrl.models.checkpoint.model_config_of) unless
    `model_cfg` is given. Default out_dir: next to the checkpoint, `<name>_hf` (`last.ckpt` -> `last_hf`).
    """
    ckpt_path = Path(ckpt_path)
    state, meta = read_checkpoint(ckpt_path)
    weights = policy_state(state)
    cfg = dict(model_cfg) if model_cfg is not None else model_config_of(ckpt_path, meta)
    spec = lora_spec(cfg)
    if spec is None and has_lora_weights(weights):  # --model-source replaced the config: LoRA from the checkpoint's
        spec = lora_spec(model_config_of(ckpt_path, meta))
    merged = merge_lora_state(weights, spec)
    embed = next((v for k, v in merged.items() if k.endswith("embed_tokens.weight")), None)
    config = hf_config(cfg, vocab_size=embed.shape[0] if embed is not None else None)
    tok = load_tokenizer(cfg) if tokenizer else None
    out = Path(out_dir) if out_dir is not None else ckpt_path.with_name(ckpt_path.stem + "_hf")
    save_hf(merged, config, out, tokenizer=tok)
    if spec and spec["save_adapter"] and has_lora_weights(weights):
        save_adapter(weights, config, spec, out / "adapter")
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
        if is_lora(module.model):  # merged full weights; the training model keeps its adapters
            save_hf(merge_lora_state(module.model.state_dict(), lora_spec(module.model_cfg)), module.model.config,
                    out, tokenizer=tokenizer, generation_config=getattr(module.model, "generation_config", None))
            if lora_spec(module.model_cfg)["save_adapter"]:
                module.model.save_pretrained(out / "adapter")
            return out
        module.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    state = full_state_dict(root)  # every rank takes part; rank 0 receives the full tensors
    if not trainer.is_global_zero:
        return None
    weights, spec = policy_state(state), lora_spec(module.model_cfg)
    save_hf(merge_lora_state(weights, spec), module.model.config, out, tokenizer=tokenizer,
            generation_config=getattr(module.model, "generation_config", None))
    if spec and spec["save_adapter"]:
        save_adapter(weights, module.model.config, spec, out / "adapter")
    return out
