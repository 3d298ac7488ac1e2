"""scripts/bench_fsdp.py's MFU: the FLOPs count, the parameter count and the peak it divides by, against
hand-derived values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_fsdp.py"
spec = importlib.util.spec_from_file_location("bench_fsdp", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_flops_per_token_is_6n_plus_attention():
    # 6 x 100 + 12 x 2 layers x 8 hidden x 10 tokens = 600 + 1920
    assert bench.flops_per_token(100, 2, 8, 10) == 2520.0


@pytest.mark.parametrize("tied, expected", [(True, 1576), (False, 1832)])
def test_model_shape_counts_a_tied_embedding_once(tied, expected):
    # V=32, d=8, 2 layers, 2 heads of 4 (kv the same), intermediate 16. A layer: q, k, v, o 4 x 64,
    # gate/up/down 3 x 128, two norms 2 x 8 = 656; embedding 256, final norm 8: 2 x 656 + 264 = 1576;
    # an untied LM head adds 256.
    cfg = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    assert bench.model_shape(model) == (expected, 2, 8)


def test_mfu_divides_by_the_peak_of_every_device():
    # 1000 tokens/s x 2520 FLOPs a token over 2 devices of 1 MFLOP/s each
    assert bench.mfu(1000.0, 2520.0, 1e6, 2) == pytest.approx(1.26)
    assert bench.mfu(1000.0, 2520.0, None, 1) is None


def test_peak_flops_from_the_flag_or_the_gpu_name(monkeypatch):
    cpu = torch.device("cpu")
    assert bench.peak_flops(cpu, None) is None
    assert bench.peak_flops(cpu, 0.19) == pytest.approx(1.9e11)
    cuda = torch.device("cuda", 0)
    for name, tflops in [("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0),
                         ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        got = bench.peak_flops(cuda, None)
        assert got == (None if tflops is None else pytest.approx(tflops * 1e12)), name


def test_batch_rows_counts_every_row_kind():
    batch = {"input_ids": torch.zeros(4, 7), "attention_mask": torch.ones(4, 7),
             "gold_attention_mask": torch.ones(2, 5), "weights": torch.ones(2)}
    assert bench.batch_rows(batch) == 6
