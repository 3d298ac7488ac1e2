"""Sharded training: FSDP2 per decoder block (Lightning's ModelParallelStrategy), an FSDP1 wrap policy,
and full state dicts gathered from a sharded model.

    trainer=fsdp2   # FSDP2Strategy below: fully_shard per block in LnrlModule.configure_model; CPU (gloo) or GPU
    trainer=fsdp    # Lightning's FSDPStrategy (FSDP1, GPU only) with DecoderBlockPolicy below

Wrapping is keyed on the decoder block class (litgpt's habit): one FSDP unit per block means one block's
parameters are all-gathered at a time, and activation checkpointing per block stores only block inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _Policy

from lnrl.models import DTYPES


def decoder_block_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """The decoder block class(es) of a transformers causal LM.

    Read from `_no_split_modules` (transformers' own list of the blocks that must stay whole), falling
    back to the types of `model.model.layers`. Works on a model already wrapped by FSDP or a
    checkpoint wrapper, since those keep the blocks as submodules.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    # fully_shard swaps a block's class for a subclass named FSDP<Block>; match on the original class.
    classes = {cls for module in model.modules() for cls in type(module).__mro__ if cls.__name__ in names}
    if not classes:
        for module in model.modules():
            layers = getattr(getattr(module, "model", None), "layers", None)
            if isinstance(layers, nn.ModuleList) and len(layers):
                classes = {type(layer) for layer in layers}
                break
    if not classes:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: it has no _no_split_modules "
                         f"and no model.layers; shard it by hand or pass a model from transformers")
    return tuple(sorted(classes, key=lambda c: c.__qualname__))


def _blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, block) for every outermost decoder block, in module order."""
    classes = decoder_block_classes(model)
    modules = dict(model.named_modules())
    found, outer = [], []
    for name, module in modules.items():
        if isinstance(module, classes) and not any(name.startswith(p + ".") for p in outer):
            outer.append(name)
            parent, _, attr = name.rpartition(".")
            found.append((modules[parent], attr, module))
    return found


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Wrap every decoder block in a non-reentrant checkpoint wrapper; return how many were wrapped.

    Only each block's input is kept for backward; the block's forward is recomputed there. A training
    forward must then not fill a KV cache: the recompute would append to it a second time. A pre-hook
    passes use_cache=False to training forwards; generation (eval mode or no grad) keeps its cache.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, CheckpointWrapper, checkpoint_wrapper)

    count = 0
    for parent, name, block in _blocks(model):
        if isinstance(parent, CheckpointWrapper):
            continue
        setattr(parent, name, checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
        count += 1
    if count:
        model.register_forward_pre_hook(_no_cache_in_training, with_kwargs=True)
    return count


def _no_cache_in_training(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if module.training and torch.is_grad_enabled():
        kwargs["use_cache"] = False
    return args, kwargs


def shard_model(model: nn.Module, mesh, *, activation_checkpointing: bool = False,
                param_dtype: torch.dtype | None = None, reduce_dtype: torch.dtype | None = torch.float32,
                reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: `fully_shard` each decoder block, then the root (embeddings, final norm, head).

    mesh: a 1-D DeviceMesh over the data-parallel ranks. param_dtype=bfloat16 computes in bf16 with
    fp32 master weights and fp32 gradient reduction (reduce_dtype); None keeps the weights' dtype.
    The model is modified in place and returned.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model  # configure_model may run again (fit, then validate): shard once
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for parent, name, block in _blocks(model):
        unit = parent if isinstance(parent, CheckpointWrapper) else block
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root holds what no block owns (embeddings, final norm, the tied head). FSDP2 keeps the
    # root's weights gathered from forward to backward whatever reshard_after_forward says: backward
    # starts with them.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy for pure FSDP2: one data-parallel mesh dimension over every process.

    The sharding itself happens in `LnrlModule.configure_model` (through `shard_for_trainer`), with the
    options held here, so they are set from the trainer config:
      activation_checkpointing: recompute each decoder block in backward (less memory, ~1/3 more compute)
      param_dtype: auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float32 — FSDP2 mixed precision
      reduce_dtype: dtype of the gradient reduce-scatter (fp32 keeps the sum exact enough in bf16 runs)
      reshard_after_forward: free each block's gathered weights after forward (ZeRO-3); false = ZeRO-2-like
      save_distributed_checkpoint: true writes a checkpoint directory with one shard per rank (no gather);
        false gathers the full state on rank 0 into one .ckpt file.
    """

    def __init__(self, activation_checkpointing: bool = False, param_dtype: str = "auto",
                 reduce_dtype: str = "float32", reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        if kwargs.get("tensor_parallel_size", 1) != 1:
            raise ValueError("FSDP2Strategy shards data-parallel only; tensor_parallel_size must be 1")
        kwargs["tensor_parallel_size"] = 1
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        if param_dtype != "auto" and param_dtype not in DTYPES:
            raise ValueError(f"trainer.strategy.param_dtype={param_dtype!r}: expected auto or one of {sorted(DTYPES)}")
        if reduce_dtype not in DTYPES:
            raise ValueError(f"trainer.strategy.reduce_dtype={reduce_dtype!r}: expected one of {sorted(DTYPES)}")
        self.activation_checkpointing = bool(activation_checkpointing)
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" data-parallel size is the node count (it expects tensor parallelism
        # inside a node); with tensor_parallel_size=1 every process is a data-parallel rank.
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def sharding_options(self) -> dict[str, Any]:
        param_dtype = self.param_dtype
        if param_dtype == "auto":
            param_dtype = "bfloat16" if self.root_device.type == "cuda" else "float32"
        return {"activation_checkpointing": self.activation_checkpointing,
                "param_dtype": None if DTYPES[param_dtype] == torch.float32 else DTYPES[param_dtype],
                "reduce_dtype": DTYPES[self.reduce_dtype],
                "reshard_after_forward": self.reshard_after_forward}


def shard_for_trainer(model: nn.Module, pl_module, frozen: bool = False) -> nn.Module:
    """Shard `model` (a policy, or a live reference with frozen=True) if the strategy is model-parallel.

    Call from `configure_model`; a no-op without a device mesh (one process, DDP, FSDP1 — which wraps
    the whole LightningModule itself). A frozen model runs under no_grad, so it skips activation
    checkpointing (no activations are kept for it anyway).
    """
    mesh = pl_module.device_mesh
    if mesh is None:
        return model
    if mesh["tensor_parallel"].size() != 1:
        raise ValueError("lnrl shards data-parallel only: use trainer=fsdp2 (tensor_parallel_size=1)")
    strategy = pl_module.trainer.strategy
    if isinstance(strategy, FSDP2Strategy):
        options = strategy.sharding_options()
    else:  # a plain ModelParallelStrategy: defaults, bf16 compute on GPU
        options = {"param_dtype": torch.bfloat16 if strategy.root_device.type == "cuda" else None}
    if frozen:
        options["activation_checkpointing"] = False
    return shard_model(model, mesh["data_parallel"], **options)


def reduce_metrics(metrics: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """Each metric's mean over the ranks that produced it; every rank gets the same dict.

    A loss may leave a metric out for a batch (no negatives in it: no `scores/negative`). Lightning's
    `sync_dist=True` all-reduces metric by metric, so ranks logging different keys issue mismatched
    collectives and hang; here the key sets are gathered first and one all-reduce carries all values
    and how many ranks had each. Every rank must call it. One process: the metrics, unchanged.
    """
    import torch.distributed as dist

    values = {k: v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in metrics.items()}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(keys, sorted(values))
    union = sorted(set().union(*keys))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    sums = torch.zeros(2, len(union), dtype=torch.float64, device=device)  # [sum over ranks, ranks present]
    for i, key in enumerate(union):
        if key in values:
            sums[0, i], sums[1, i] = values[key].to(torch.float64).item(), 1.0
    dist.all_reduce(sums)
    return {key: (sums[0, i] / sums[1, i]).float().cpu() for i, key in enumerate(union)}


def is_sharded(module: nn.Module) -> bool:
    """True when `module` is, or holds, an FSDP2- or FSDP1-sharded module: its forward is a collective."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in module.modules())


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a possibly sharded module, on CPU, on rank 0 only.

    A collective when sharded: every rank must call it; the other ranks get {}. An unsharded module
    gives its plain state dict (on CPU) on every rank.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class DecoderBlockPolicy(_Policy):
    """FSDP1 auto-wrap / activation-checkpointing policy: one unit per decoder block of the model it wraps.

    For Lightning's FSDPStrategy (its `auto_wrap_policy` and `activation_checkpointing_policy` accept a
    policy object). The block classes are read from the root module when FSDP applies the policy, so
    one config works for any transformers model.
    """

    def _run_policy(self, root_module: nn.Module, ignored_modules: set[nn.Module],
                    root_kwargs: dict[str, Any]) -> dict[nn.Module, dict[str, Any]]:
        policy = ModuleWrapPolicy(set(decoder_block_classes(root_module)))
        return policy._run_policy(root_module, ignored_modules, root_kwargs)


def fsdp1_strategy(activation_checkpointing: bool = False, sharding_strategy: str = "FULL_SHARD",
                   state_dict_type: str = "sharded", **kwargs: Any):
    """Lightning's FSDPStrategy (FSDP1, GPU only) wrapping and, optionally, checkpointing per decoder block.

    sharding_strategy: FULL_SHARD (ZeRO-3) | SHARD_GRAD_OP (ZeRO-2) | NO_SHARD (DDP) | HYBRID_SHARD
    (shard inside a node, replicate across nodes). state_dict_type: sharded (a checkpoint directory,
    one shard per rank) | full (gathered on rank 0 into one file). Other kwargs go to FSDPStrategy.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    policy = DecoderBlockPolicy()
    return FSDPStrategy(auto_wrap_policy=policy,
                        activation_checkpointing_policy=policy if activation_checkpointing else None,
                        sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
