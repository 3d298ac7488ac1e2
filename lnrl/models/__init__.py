"""Models: load a causal LM and its tokenizer by config (`loading`: the embedded default, any local path
or hub id, a tiny random model for tests, an lnrl checkpoint), read checkpoints (`checkpoint`) and
write save_pretrained exports (`export`). No training logic lives here.
"""

from lnrl.models.checkpoint import model_config_of, policy_state, read_checkpoint
from lnrl.models.embedded import embedded_path
from lnrl.models.export import export_checkpoint, export_module, save_hf
from lnrl.models.loading import (
    DTYPES,
    SOURCES,
    Policy,
    build_tiny,
    disable_dropout,
    hf_config,
    load_model,
    load_policy,
    load_tokenizer,
    pick_device,
    pretrained_path,
    tokenizer_path,
)

__all__ = [
    "DTYPES",
    "SOURCES",
    "Policy",
    "build_tiny",
    "disable_dropout",
    "embedded_path",
    "export_checkpoint",
    "export_module",
    "hf_config",
    "load_model",
    "load_policy",
    "load_tokenizer",
    "model_config_of",
    "pick_device",
    "policy_state",
    "pretrained_path",
    "read_checkpoint",
    "save_hf",
    "tokenizer_path",
]
