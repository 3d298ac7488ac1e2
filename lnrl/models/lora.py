"""LoRA adapters (the `peft` package) as a model option: train low-rank adapters on a frozen base.

    model.lora: null                                  # full fine-tuning (default)
    model.lora={r:8,alpha:16}                         # LoRA on every linear layer but the head
    model.lora={r:16,alpha:32,dropout:0.05,target_modules:[q_proj,v_proj],save_adapter:true}

Each adapted linear layer computes  W x + (alpha / r) * B A x  with A [r, in] random and B [out, r] zero,
so a fresh adapter leaves the model's outputs exactly as they were. Only A and B train (the optimizer
sees only parameters that require grad). With the adapter disabled the model is the frozen base: the
live reference of DPO-style losses (LnrlModule.live_reference), so no second copy is loaded.

Exports and checkpoint loads merge the adapter into the weights (`merge_lora_state`: W + scale * B A), so
sampling and evaluation load a plain model; `save_adapter: true` also writes the adapter in PEFT's
format (`<export>/adapter/`, loadable with `peft.PeftModel.from_pretrained(base, dir)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Every field of model.lora and its default; `target_modules: all-linear` is PEFT's "every linear layer
# except the output head" (the head is tied to the embeddings in SmolLM2).
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                                 "save_adapter": False}
ADAPTER = "default"            # PEFT's adapter name; lnrl trains one adapter
PEFT_PREFIX = "base_model.model."


def lora_spec(model_cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """model.lora with its defaults filled in, checked; None when LoRA is off (null or absent)."""
    lora = (model_cfg or {}).get("lora")
    if hasattr(lora, "_get_node"):  # an OmegaConf node (a DictConfig straight from Hydra)
        from omegaconf import OmegaConf

        lora = OmegaConf.to_container(lora, resolve=True)
    if lora is None or lora is False:
        return None
    if not isinstance(lora, Mapping):
        raise ValueError(f"model.lora={lora!r}: expected null (full fine-tuning) or a mapping such as "
                         f"{{r: 8, alpha: 16}} with fields {sorted(LORA_DEFAULTS)}")
    unknown = sorted(set(lora) - set(LORA_DEFAULTS))
    if unknown:
        raise ValueError(f"model.lora.{unknown[0]}: unknown field; model.lora accepts {sorted(LORA_DEFAULTS)}")
    spec = {**LORA_DEFAULTS, **dict(lora)}
    if isinstance(spec["r"], bool) or not isinstance(spec["r"], int) or spec["r"] < 1:
        raise ValueError(f"model.lora.r={spec['r']!r}: expected an integer rank >= 1")
    if isinstance(spec["alpha"], bool) or not isinstance(spec["alpha"], (int, float)) or spec["alpha"] <= 0:
        raise ValueError(f"model.lora.alpha={spec['alpha']!r}: expected a number > 0 (the scale is alpha / r)")
    if isinstance(spec["dropout"], bool) or not isinstance(spec["dropout"], (int, float)) \
            or not 0 <= spec["dropout"] < 1:
        raise ValueError(f"model.lora.dropout={spec['dropout']!r}: expected a number in [0, 1)")
    modules = spec["target_modules"]
    if not (isinstance(modules, str) or isinstance(modules, (list, tuple)) and modules
            and all(isinstance(m, str) for m in modules)):
        raise ValueError(f"model.lora.target_modules={modules!r}: expected 'all-linear' or a list of module "
                         f"names, e.g. [q_proj, k_proj, v_proj, o_proj]")
    spec["target_modules"] = modules if isinstance(modules, str) else list(modules)
    return spec


def without_lora(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the base model alone (what a merged export or a fresh adapter's outputs equal)."""
    return {k: v for k, v in dict(model_cfg).items() if k != "lora"}


def scale(spec: Mapping[str, Any]) -> float:
    return float(spec["alpha"]) / int(spec["r"])


def apply_lora(model: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """Wrap `model` in fresh LoRA adapters (a peft PeftModel); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(spec["r"]), lora_alpha=spec["alpha"], lora_dropout=float(spec["dropout"]),
                        target_modules=spec["target_modules"], bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise ValueError(f"model.lora.target_modules={spec['target_modules']!r}: {e}") from None


def is_lora(model: nn.Module | None) -> bool:
    """True for a model wrapped in LoRA adapters (a peft PeftModel)."""
    return model is not None and hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def has_lora_weights(state: Mapping[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k for k in state)


def merge_lora_state(state: Mapping[str, torch.Tensor], spec: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """A PEFT LoRA model's state dict -> the plain model's, each adapted weight merged: W + (alpha/r) B A.

    Keys lose PEFT's `base_model.model.` prefix and `.base_layer`; the adapter matrices disappear. The
    merge is done in float32 and cast back to the weight's dtype. A state without adapters is returned
    as is.
    """
    if not has_lora_weights(state):
        return dict(state)
    if spec is None:
        raise ValueError("the weights hold LoRA adapters but the model config has no model.lora (needed for the "
                         "scale alpha / r); give the config the run was trained with")
    s = scale(spec)
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.{ADAPTER}.weight"
            if key.endswith(marker):
                lora.setdefault(key[: -len(marker)], {})[part] = value
                break
        else:
            plain[key.replace(".base_layer.", ".")] = value
    for module, ab in lora.items():
        weight = plain[f"{module}.weight"]
        delta = (ab["lora_B"].float() @ ab["lora_A"].float()) * s
        plain[f"{module}.weight"] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
    return plain


def save_adapter(state: Mapping[str, torch.Tensor], config, spec: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write the adapter of a PEFT LoRA state dict in PEFT's own format (adapter_config.json +
    adapter_model.safetensors). The model is built on the meta device and the tensors assigned, so this
    costs no copy of the base weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = apply_lora(AutoModelForCausalLM.from_config(config), spec)
    model.load_state_dict(dict(state), strict=False, assign=True)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
