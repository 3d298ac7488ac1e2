"""Sharding helpers in one process: decoder-block discovery, activation checkpointing, FSDP2 on a
1-process gloo group, the trainer configs. The 2-process runs are in test_fsdp_multiprocess.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate

from conftest import compose_cfg
from lnrl.distributed import (DecoderBlockPolicy, FSDP2Strategy, apply_activation_checkpointing,
                              decoder_block_classes, full_state_dict, is_sharded, shard_model)
from lnrl.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer({"source": "tiny"})


def tiny(tok, **kw):
    return load_model({"source": "tiny", "num_layers": 3, **kw}, tok)


def batch(seed: int = 0, rows: int = 2, width: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 2000, (rows, width), generator=g)


@pytest.fixture
def one_process_group(tmp_path):
    """A real (1-rank, gloo) process group, so fully_shard runs in this process."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_decoder_blocks_come_from_no_split_modules(tok):
    model = tiny(tok)
    assert set(model._no_split_modules) == {"LlamaDecoderLayer"}
    assert [c.__name__ for c in decoder_block_classes(model)] == ["LlamaDecoderLayer"]


def test_decoder_blocks_fall_back_to_model_layers():
    """A model without _no_split_modules: the types found in model.layers."""
    class Block(torch.nn.Linear):
        pass

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(2, 2), Block(2, 2)])

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    assert decoder_block_classes(Outer()) == (Block,)
    with pytest.raises(ValueError, match="cannot find the decoder blocks of Linear"):
        decoder_block_classes(torch.nn.Linear(2, 2))


def test_activation_checkpointing_keeps_loss_gradients_and_state_dict_names(tok):
    """Recomputing each block in backward changes memory, not math: equal loss and gradients.

    A training forward must not fill a KV cache (the recompute would append to it again), while
    generation in eval mode still returns one.
    """
    plain, ckpt = tiny(tok), tiny(tok)
    assert apply_activation_checkpointing(ckpt) == 3
    assert apply_activation_checkpointing(ckpt) == 0  # idempotent: no wrapper inside a wrapper
    x = batch()
    out_plain, out_ckpt = plain(input_ids=x, labels=x), ckpt(input_ids=x, labels=x)
    assert out_ckpt.past_key_values is None and out_plain.past_key_values is not None
    out_plain.loss.backward()
    out_ckpt.loss.backward()
    torch.testing.assert_close(out_ckpt.loss, out_plain.loss, rtol=0, atol=0)
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # the wrapper's prefix is hidden
    grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in ckpt.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-6, atol=1e-7)
    ckpt.eval()
    with torch.no_grad():
        assert ckpt(input_ids=x).past_key_values is not None


def test_fsdp1_policy_selects_each_decoder_block(tok):
    """DecoderBlockPolicy (trainer=fsdp) wraps exactly the blocks; as an AC policy Lightning wraps them too."""
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    model = tiny(tok)
    targets = DecoderBlockPolicy()._run_policy(model, set(), {})
    assert list(targets) == list(model.model.layers)
    _setup_activation_checkpointing(model, {"auto_wrap_policy": DecoderBlockPolicy()})
    assert all(isinstance(layer, CheckpointWrapper) for layer in model.model.layers)
    assert sum(isinstance(m, CheckpointWrapper) for m in model.modules()) == 3


@pytest.mark.parametrize("ac", [False, True])
def test_fully_shard_matches_the_plain_model(tok, one_process_group, ac):
    """FSDP2 per block + root (1 rank): same loss, same update, full state dict with the plain names."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    plain, sharded = tiny(tok), tiny(tok)
    shard_model(sharded, init_device_mesh("cpu", (1,)), activation_checkpointing=ac)
    assert isinstance(sharded, FSDPModule) and is_sharded(sharded) and not is_sharded(plain)
    units = [m for m in sharded.modules() if isinstance(m, FSDPModule)]
    assert len(units) == 4  # three blocks and the root
    assert shard_model(sharded, init_device_mesh("cpu", (1,))) is sharded  # a second call is a no-op
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, sharded)]
    for step in range(2):
        x = batch(step)
        losses = [m(input_ids=x, labels=x).loss for m in (plain, sharded)]
        for loss, opt in zip(losses, opts):
            loss.backward()
            opt.step()
            opt.zero_grad()
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    full = full_state_dict(sharded)
    ref = plain.state_dict()
    assert list(full) == list(ref)
    for name, value in ref.items():
        assert not isinstance(full[name], type(next(sharded.parameters())))  # plain tensors, not DTensors
        torch.testing.assert_close(full[name], value, rtol=1e-5, atol=1e-6)


def test_sharded_generate_equals_plain_generate(tok, one_process_group):
    """Generation through lnrl.generation passes synced_gpus for a sharded model and decodes the same text."""
    from torch.distributed.device_mesh import init_device_mesh

    from lnrl.generation import generate

    plain, sharded = tiny(tok), tiny(tok)
    shard_model(sharded, init_device_mesh("cpu", (1,)))
    questions = ["What is 2 + 3?", "Name a prime number larger than ten."]
    a = generate(plain, tok, questions, max_new_tokens=6, progress=False)
    b = generate(sharded, tok, questions, max_new_tokens=6, progress=False)
    assert [g[0].text for g in a] == [g[0].text for g in b]


def test_fsdp2_trainer_config_builds_the_strategy(tmp_path):
    """trainer=fsdp2 on CPU: our ModelParallelStrategy, fp32 compute, every process a data-parallel rank."""
    cfg = compose_cfg(["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2",
                       "trainer.strategy.activation_checkpointing=true"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    strategy = trainer.strategy
    assert isinstance(strategy, FSDP2Strategy) and strategy.num_processes == 2
    assert strategy.sharding_options() == {"activation_checkpointing": True, "param_dtype": None,
                                           "reduce_dtype": torch.float32, "reshard_after_forward": True}
    assert trainer.precision == "32-true"
    strategy.param_dtype = "bfloat16"
    assert strategy.sharding_options()["param_dtype"] is torch.bfloat16


def test_fsdp2_strategy_rejects_bad_options():
    with pytest.raises(ValueError, match="param_dtype='bf32'"):
        FSDP2Strategy(param_dtype="bf32")
    with pytest.raises(ValueError, match="tensor_parallel_size must be 1"):
        FSDP2Strategy(tensor_parallel_size=2)


def test_fsdp1_refuses_cpu(tmp_path):
    """trainer=fsdp is GPU only: Lightning refuses FSDPStrategy with the CPU accelerator, saying so."""
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_cfg(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy) is FSDPStrategy and isinstance(strategy.kwargs["auto_wrap_policy"], DecoderBlockPolicy)
    with pytest.raises(Exception, match="requires a GPU accelerator"):
        instantiate(cfg.trainer, logger=False, callbacks=[])


def test_reduce_metrics_in_one_process(one_process_group):
    """One rank: the values themselves, as float tensors (the 2-rank case: test_fsdp_multiprocess)."""
    from lnrl.distributed import reduce_metrics

    out = reduce_metrics({"a": torch.tensor(2.5, dtype=torch.float64), "b": 3})
    assert out == {"a": torch.tensor(2.5), "b": torch.tensor(3.0)} and out["a"].dtype == torch.float32
