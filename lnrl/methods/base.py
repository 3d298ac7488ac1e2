"""What every method shares: the model, reference scores, the objective, optimizer and schedule, logging.

A method is named for the batches it eats (`data_kind`: SFT rows, pairs or groups) and feeds the
registry losses of one kind (`loss_kind`). Its objective is a weighted sum of registry losses,

    L = loss(...) + sum_t weight_t * term_t(...)

the primary `loss` (the `loss:` config group, weight 1) plus the extra terms of `method.extra_losses`,
e.g. `{nll: {weight: 1.0}}`. An extra term is a loss of the module's own kind (same inputs as the
primary) or a token loss on the module's SFT rows: the chosen side of pairs, the gold CoTs of
groups, the rows themselves for SFT. Each term is logged as train/<term> (unweighted), the total as
train/loss. A subclass arranges its batch into the inputs of each kind (`objective`); the loop,
precision, strategy and checkpointing belong to Lightning.

Reference scores go to every term whose registry spec says `needs_reference`, whatever the module:
- `reference: cached` (default): per-response reference SeqScores stored in the group file by
  `lnrl-refscores` (`ref_logp_sum` / `ref_n_tokens` in the batch), so no second model sits in memory
  during a sweep;
- `reference: live`: a frozen copy of the starting model, loaded like the policy (and sharded like it
  under trainer=fsdp2), scored under no_grad. It is kept out of the module's registered children on
  purpose: not checkpointed, not handed to the optimizer, not moved or wrapped by the strategy.
`live_reference(rows)` is the one place a reference model scores rows. With LoRA (`model.lora`) no copy
is loaded: the reference is the policy with its adapter disabled, which is exactly the frozen base.

Scoring (`score_with`, the one place any model here scores rows: policy, live reference, validation)
takes `lnrl.scoring.score_batch`, the fast path, by default (`method.fast_scoring: true`): the LM head
only at scored positions, each shared prompt once (a pair's two rows, a group's k members and its gold
row), rows cut into sub-batches by length; the same numbers as the plain path (tests/test_methods_fast.py,
docs/performance.md). It falls back to the plain path by itself for a sharded head (FSDP2) and
stops sharing prompts under activation checkpointing. `method.fast_scoring=false` forces the plain path,
`model(...).logits` then `sequence_logps`, with every part of a batch padded into one forward.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import lightning.pytorch as pl
import torch
from torch import Tensor

from lnrl.checkpoint_io import PoisonedStateError, resume_hint
from lnrl.checks import is_number
from lnrl.distributed import reduce_metrics, shard_for_trainer
from lnrl.losses import LossOutput, LossSpec, build_loss, check_compatible
from lnrl.models import load_model, load_tokenizer
from lnrl.models.lora import is_lora, lora_spec
from lnrl.scoring import SeqScores, score_batch, sequence_logps

REFERENCES = ("cached", "live")
# The NaN guard's bounds on "finite but absurd" (docs/reliability.md). Real training sits orders of magnitude
# below them: a token NLL is at most a few tens, a DPO loss about beta * |margin| (hundreds at most), a
# gradient norm before clipping rarely above 1e3. Above them the setup is numerically broken
# (loss.beta=1e30: the sigmoid saturates and the loss is 0 or 1e31; optim.lr=1e30: the update overflows)
# and the run stops before the update instead of training on noise and exiting 0.
LOSS_LIMIT = 1e6
GRAD_NORM_LIMIT = 1e8
WEIGHT_NORM_LIMIT = 1e10  # the L2 norm of all weights after a step (a 70B model's is about 1e4)
ROWS = ("input_ids", "attention_mask", "completion_mask")


def cat_rows(a: dict[str, Tensor], b: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
    """Stack two right-padded row sets ([N,T], [M,T']) into [N+M, max(T,T')], padding on the right."""
    T = max(a["input_ids"].shape[1], b["input_ids"].shape[1])

    def pad(x: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return {k: torch.cat([pad(a[k], pad_id if k == "input_ids" else 0), pad(b[k], pad_id if k == "input_ids" else 0)])
            for k in ROWS}


class Term(NamedTuple):
    name: str                      # logged as train/<name>
    weight: float
    fn: Callable[..., LossOutput]
    spec: LossSpec


class Objective(NamedTuple):
    loss: Tensor                   # sum_t weight_t * terms[t]
    terms: dict[str, Tensor]       # each term's unweighted value, the primary loss first
    primary: LossOutput            # the `loss:` group's output
    metrics: dict[str, Tensor]     # the primary's metrics, then the extra terms' (primary wins a clash)


def build_factory(value: Any, key: str) -> tuple[Callable | None, dict]:
    """(callable, its config) from a `_target_` + `_partial_: true` config (`conf/optim`, `conf/scheduler`)
    or from the partial Hydra's recursive instantiation already made of it. Empty means none."""
    from hydra.utils import instantiate

    if not value:
        return None, {}
    if isinstance(value, functools.partial):
        check_factory(value, key)
        target = f"{value.func.__module__}.{value.func.__qualname__}"
        return value, {"_target_": target, "_partial_": True, **value.keywords}
    if isinstance(value, Mapping) and value.get("_target_"):
        if not value.get("_partial_"):
            raise ValueError(f"{key}: set {key}._partial_=true; the module calls it once the parameters "
                             f"(and the number of steps) are known")
        factory = instantiate(dict(value), _convert_="all")
        check_factory(factory, key)
        return factory, dict(value)
    raise ValueError(f"{key}: expected a `_target_` config with `_partial_: true` (lnrl/conf/{key}/*.yaml, "
                     f"e.g. {key}=adamw | sgd for optim, cosine | constant for scheduler), got {value!r}. "
                     f"`{key}.name` is no longer read: pick the config option instead")


def check_factory(factory: functools.partial, key: str) -> None:
    """Fail at construction, naming the config key, on an optimizer or schedule the module could not build:
    a numeric argument given a non-number (`optim.lr=abc`), or one its target refuses (`optim.lr=-1`).
    Checked against the target's signature and by building it once on a dummy parameter."""
    target = f"{factory.func.__module__}.{factory.func.__qualname__}"
    try:
        params = inspect.signature(factory.func).parameters
    except (TypeError, ValueError):
        params = {}
    for name, value in factory.keywords.items():
        default = params[name].default if name in params else None
        numbers = default if isinstance(default, tuple) and default and all(map(is_number, default)) else None
        if is_number(default) and not is_number(value):
            raise ValueError(f"{key}.{name}={value!r}: expected a finite number ({target}, default {default})")
        if numbers and not (isinstance(value, Sequence) and not isinstance(value, str)
                            and len(value) == len(numbers) and all(map(is_number, value))):
            raise ValueError(f"{key}.{name}={value!r}: expected {len(numbers)} finite numbers, "
                             f"e.g. {list(numbers)} ({target})")
    probe = torch.nn.Parameter(torch.zeros(1))
    try:
        if key == "scheduler":
            factory(torch.optim.SGD([probe], lr=1.0), total_steps=10)
        else:
            factory([probe])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{key} ({target}) refuses its arguments {factory.keywords}: {e} "
                         f"(the {key}.* keys of your config)") from None


_ABSURD_HINT = ("Lower optim.lr, check loss.* (e.g. loss.beta) and the data; the bounds are LOSS_LIMIT, "
                "GRAD_NORM_LIMIT and WEIGHT_NORM_LIMIT in lnrl.methods.base (docs/reliability.md).")


class LnrlModule(pl.LightningModule):
    data_kind: ClassVar[str] = "sft"         # which batches the datamodule serves: sft | pairs | groups
    loss_kind: ClassVar[str] = "token"       # the registry kind of the primary loss
    takes_weights: ClassVar[bool] = False    # the batches carry per-example weights (pairs)

    def __init__(self, model: dict, loss: dict, optim: Any, scheduler: Any = None, tokenizer=None,
                 reference: str = "cached", extra_losses: Mapping[str, Mapping] | None = None,
                 fast_scoring: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "optim", "scheduler"])
        self.optim_factory, optim_cfg = build_factory(optim, "optim")
        self.scheduler_factory, scheduler_cfg = build_factory(scheduler, "scheduler")
        if self.optim_factory is None:
            raise ValueError("optim: missing; pick an optimizer config, e.g. optim=adamw")
        self.hparams.update(optim=optim_cfg, scheduler=scheduler_cfg)  # checkpointed as configs, not objects
        self.model_cfg = dict(model)
        if reference not in REFERENCES:
            raise ValueError(f"method.reference={reference!r}; expected one of {REFERENCES}")
        self.reference = reference
        if not isinstance(fast_scoring, bool):
            raise ValueError(f"method.fast_scoring={fast_scoring!r}; expected true (lnrl.scoring.score_batch) "
                             f"or false (the plain path)")
        self.fast_scoring = fast_scoring
        self.terms = self.build_terms(loss, extra_losses or {})
        self.loss_fn = self.terms[0].fn
        # Which input kinds need reference scores: the subclass computes them only for those.
        self.ref_kinds = {t.spec.kind for t in self.terms if t.spec.needs_reference}
        self.needs_reference = bool(self.ref_kinds)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_cfg)
        self.model: torch.nn.Module | None = None
        self._ref_model: tuple[torch.nn.Module, ...] = ()  # a tuple hides it from nn.Module registration
        # Held-out gold CoTs are scored by token NLL whatever the method, so val/loss compares across methods.
        self.nll_fn = build_loss("nll")

    # -- objective ---------------------------------------------------------------------------
    def build_terms(self, loss: Mapping, extra_losses: Mapping[str, Mapping]) -> list[Term]:
        """The primary loss (weight 1) and the extra terms, each checked by the registry against what
        this module can feed (reference scores it can always serve: cached or live)."""
        name = type(self).__name__
        primary = build_loss(**dict(loss))
        terms = [Term(primary.name, 1.0, primary,
                      check_compatible(primary, kind=self.loss_kind, has_reference=True, method=name))]
        for key, cfg in extra_losses.items():
            cfg = dict(cfg or {})
            weight = float(cfg.pop("weight", 1.0))
            where = f"method.extra_losses.{key}"
            if weight < 0:
                raise ValueError(f"{where}.weight={weight}; must be >= 0")
            if key == "loss" or key == terms[0].name:
                raise ValueError(f"{where}: the name {key!r} is taken by "
                                 f"{'the total' if key == 'loss' else 'the primary loss'} in the logs "
                                 f"(train/{key}); name the term otherwise and give the loss as {where}.name")
            fn = build_loss(cfg.pop("name", key), **cfg)
            spec = check_compatible(fn, kind=(self.loss_kind, "token"), has_reference=True, method=f"{name} ({where})")
            if weight > 0:  # a zero-weight term is not computed at all (AFT's sft_weight=0: no gold rows)
                terms.append(Term(key, weight, fn, spec))
        return terms

    def has_term(self, kind: str) -> bool:
        return any(t.spec.kind == kind for t in self.terms)

    def objective(self, batch: dict[str, Tensor]) -> Objective:
        """Score the batch and combine the terms; each subclass arranges its own batch."""
        raise NotImplementedError

    def combine(self, inputs: dict[str, dict], refs: dict[str, dict]) -> Objective:
        """Call each term on the inputs of its kind (plus reference scores when it needs them) and sum."""
        total, values, extra = None, {}, {}
        primary: LossOutput | None = None
        for t in self.terms:
            out = t.fn(**inputs[t.spec.kind], **(refs[t.spec.kind] if t.spec.needs_reference else {}))
            values[t.name] = out.loss
            if primary is None:
                primary, total = out, out.loss
            else:
                total = total + t.weight * out.loss
                extra.update(out.metrics)
        return Objective(total, values, primary, {**extra, **primary.metrics})

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        """Examples in a batch (rows, pairs or groups), for averaging logged metrics."""
        return batch["input_ids"].shape[0]

    def training_step(self, batch, batch_idx):
        obj = self.objective(batch)
        self.log_metrics("train", {"loss": obj.loss, **obj.terms, **obj.metrics}, batch_size=self.batch_size(batch))
        return obj.loss

    # -- model and reference ------------------------------------------------------------------
    def configure_model(self) -> None:
        # Built here rather than in __init__ so sharded strategies can wrap it before it is materialised.
        if self.model is None:
            self.check_lora_strategy()
            model = load_model(self.model_cfg, self.tokenizer)
            if is_lora(model):
                # Shard the transformers model inside peft's wrapper, in place: generate() bypasses the
                # wrapper's forward, so a sharded wrapper's root hooks would never gather the embeddings.
                shard_for_trainer(model.get_base_model(), self)
                self.model = model
            else:
                # Under trainer=fsdp2 this shards per decoder block; otherwise it returns the model as is.
                self.model = shard_for_trainer(model, self)
            self.model.train()  # from_pretrained returns eval mode; dropout is off either way
        if self.reference == "live" and self.needs_reference and not self._ref_model:
            self.configure_reference()

    def check_lora_strategy(self) -> None:
        """LoRA (model.lora) under trainer=fsdp (FSDP1, GPU only) is refused before the model loads: FSDP1
        flattens each block's frozen base weights and trainable adapters together, which lnrl does not
        test. FSDP2 (trainer=fsdp2) shards per parameter and is supported (docs/distributed.md)."""
        strategy = getattr(self._trainer, "strategy", None)
        if lora_spec(self.model_cfg) is None or strategy is None:
            return
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(strategy, FSDPStrategy):
            raise ValueError("model.lora is set but trainer=fsdp (FSDPStrategy, FSDP1) does not support LoRA "
                             "in lnrl; use trainer=fsdp2 (FSDP2 shards LoRA runs), trainer=gpu, or model.lora=null")

    def configure_reference(self) -> None:
        """Load the live reference: a frozen copy of the starting model (none with LoRA: live_reference)."""
        if is_lora(self.model):
            return
        ref = load_model(self.model_cfg, self.tokenizer)
        ref.eval()
        ref.requires_grad_(False)
        # Sharded like the policy under trainer=fsdp2; kept in a tuple so it stays out of
        # state_dict, checkpoints and the optimizer.
        self._ref_model = (shard_for_trainer(ref, self, frozen=True),)

    @property
    def ref_model(self) -> torch.nn.Module | None:
        return self._ref_model[0] if self._ref_model else None

    def score(self, rows: Mapping[str, Tensor], prefixes: Sequence[str] = ("",)) -> SeqScores:
        """Policy SeqScores of right-padded rows (see `score_with`)."""
        return self.score_with(self.model, rows, prefixes)

    def score_with(self, model: torch.nn.Module, rows: Mapping[str, Tensor],
                   prefixes: Sequence[str] = ("",)) -> SeqScores:
        """SeqScores under `model` of the rows `{prefix}input_ids`, `{prefix}attention_mask`,
        `{prefix}completion_mask` of each prefix, concatenated in order: `prefixes=("", "gold_")` scores a
        group batch's members then its gold rows, in one call so a gold row shares its group's prompt."""
        if self.fast_scoring:
            return score_batch(model, rows, prefixes=prefixes)
        parts = [{k: rows[f"{p}{k}"] for k in ROWS} for p in prefixes]
        joined = functools.reduce(lambda a, b: cat_rows(a, b, self.tokenizer.pad_token_id), parts)
        logits = model(input_ids=joined["input_ids"], attention_mask=joined["attention_mask"]).logits
        return sequence_logps(logits, joined["input_ids"], joined["completion_mask"])

    def reference_scores(self, rows: Mapping[str, Tensor]) -> SeqScores:
        """Reference SeqScores of `rows`: the cached `ref_logp_sum` / `ref_n_tokens` they carry, or live."""
        if self.reference == "live":
            return self.live_reference(rows)
        if "ref_logp_sum" not in rows:
            path = self.prefs_path()
            raise ValueError(
                f"{path}: some rows have no cached reference scores ('ref' on completions, 'gold_ref' on gold "
                f"solutions used as responses); run lnrl-refscores first (lnrl-refscores input={path} "
                f"model=<the starting model>), or train with method.reference=live")
        return SeqScores(rows["ref_logp_sum"].float(), rows["ref_n_tokens"])

    @torch.no_grad()
    def live_reference(self, rows: Mapping[str, Tensor]) -> SeqScores:
        """Score `rows` with the frozen reference. The override point for another reference source."""
        if is_lora(self.model):
            # LoRA trains only the adapters: with them disabled the policy is the frozen starting model.
            with self.model.disable_adapter():
                return self.score(rows)
        ref = self.ref_model
        if next(ref.parameters()).device != rows["input_ids"].device:
            ref.to(rows["input_ids"].device)  # not a registered child, so Lightning does not move it
        return self.score_with(ref, rows)

    def prefs_path(self) -> str:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return str(getattr(dm, "prefs_path", None) or "the preference file")

    # -- data checks ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Lightning has set up the datamodule by now, and not yet built the model: fail before loading it.
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        name = type(self).__name__
        kind = getattr(dm, "kind", None)
        if kind is not None and kind != self.data_kind:
            raise ValueError(f"{name} trains on '{self.data_kind}' batches but the datamodule serves '{kind}'; "
                             f"build it with kind={self.data_kind!r} (lnrl-train takes the kind from the method)")
        weight_field = getattr(dm, "weight_field", None)
        if weight_field and not self.takes_weights:
            raise ValueError(f"data.weight_field={weight_field!r} gives per-pair weights, but {name} trains on "
                             f"'{self.data_kind}' batches, which carry none; set data.weight_field=null")
        if weight_field:
            for t in self.terms:
                if t.spec.kind == self.loss_kind:
                    try:
                        check_compatible(t.fn, kind=self.loss_kind, has_reference=True, has_weights=True, method=name)
                    except ValueError as e:
                        raise ValueError(f"{e} (data.weight_field={weight_field!r} gives per-pair weights; set "
                                         f"data.weight_field=null to train unweighted)") from None

    # -- validation ---------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        out = self.nll_fn(scores=self.score(batch))
        self.log_metrics("val", {"loss": out.loss}, batch_size=batch["input_ids"].shape[0])

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        # trainer.model: the (possibly sharded) module whose parameters the strategy manages.
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        try:
            optimizer = self.optim_factory(params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"optim ({self.hparams.optim.get('_target_')}) refuses its arguments: {e} "
                             f"(the optim.* keys of your config)") from e
        if self.scheduler_factory is None:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- logging ------------------------------------------------------------------------------
    def log_metrics(self, prefix: str, metrics: dict[str, Tensor], batch_size: int) -> None:
        """Log scalars averaged over the epoch/accumulation window and reduced across ranks."""
        # Reduced here, not by sync_dist: a metric some ranks lack this batch would hang sync_dist.
        for key, value in reduce_metrics(metrics).items():
            name = key if "/" in key else f"{prefix}/{key}"
            self.log(name, value.to(self.device), on_step=prefix == "train", on_epoch=prefix != "train",
                     batch_size=batch_size, prog_bar=name in ("train/loss", "val/loss"))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Logged here (not with LearningRateMonitor) so it works with logger=none too.
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        # The gradients about to be applied (accumulated, before clipping): a non-finite or absurd norm
        # stops the run before the update. The norm is global, so every rank decides alike.
        norm = self._global_norm([p.grad for g in optimizer.param_groups for p in g["params"]
                                  if p.grad is not None])
        if not norm <= GRAD_NORM_LIMIT:  # also NaN
            what = ("not finite" if not math.isfinite(norm) else
                    f"{norm:.3g}, above GRAD_NORM_LIMIT={GRAD_NORM_LIMIT:g}")
            raise FloatingPointError(
                f"gradient norm {what} at global step {self.global_step} (epoch {self.current_epoch}); the weights "
                f"were not updated. {_ABSURD_HINT} {self._resume_hint()}")
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # The update itself can overflow with finite gradients (optim.lr=1e30): check the weights before
        # the step's checkpoint is written (ModelCheckpoint runs at batch end), so none is ever non-finite.
        norm = self._global_norm([p for g in optimizer.param_groups for p in g["params"]])
        if not norm <= WEIGHT_NORM_LIMIT:
            what = ("non-finite" if not math.isfinite(norm) else
                    f"absurd (norm {norm:.3g} > WEIGHT_NORM_LIMIT={WEIGHT_NORM_LIMIT:g})")
            raise PoisonedStateError(
                f"the optimizer update at global step {self.global_step} made the weights {what}; this state is "
                f"not saved. {_ABSURD_HINT} {self._resume_hint()}")

    def on_before_backward(self, loss: Tensor) -> None:
        # Stop before a NaN (or an absurd value) reaches the weights. Every rank must agree before backward:
        # under FSDP a rank that stopped alone would leave the others waiting in the gradient reduce-scatter.
        value = float(loss.detach().float())
        bad = not abs(value) <= LOSS_LIMIT  # also NaN
        n_bad = self._count_ranks(bad)
        if not n_bad:
            return
        if not bad:
            what = "non-finite or absurd training loss on another rank"
        elif math.isfinite(value):
            what = f"absurd training loss ({value:.3g}, above LOSS_LIMIT={LOSS_LIMIT:g})"
        else:
            what = f"non-finite training loss ({value})"
        world = self._trainer.world_size if self._trainer is not None else 1
        ranks = f" ({n_bad} of {world} ranks)" if world > 1 else ""
        raise FloatingPointError(f"{what}{ranks} at global step {self.global_step}, epoch {self.current_epoch}; "
                                 f"weights were not updated. {_ABSURD_HINT} {self._resume_hint()}")

    def _count_ranks(self, flag: bool) -> int:
        """On how many ranks `flag` holds: one all-reduce of a scalar when there are several ranks."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return int(flag)
        return int(trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum").item())

    def _global_norm(self, tensors: list[Tensor]) -> float:
        """L2 norm over all ranks of `tensors` (the local shards of sharded ones); inf or NaN when a value is
        not finite. Exact for the sharded strategies (fsdp, fsdp2), whose ranks hold disjoint shards."""
        local = [(t.to_local() if hasattr(t, "to_local") else t).detach() for t in tensors]
        local = [t for t in local if t.numel()]
        sq = (torch.nn.utils.get_total_norm(local).double() ** 2 if local
              else torch.zeros((), dtype=torch.float64, device=self.device))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            sq = trainer.strategy.reduce(sq.to(self.device), reduce_op="sum")
        return math.sqrt(sq.item()) if math.isfinite(sq.item()) else sq.item()

    def _resume_hint(self) -> str:
        return resume_hint(self._trainer) if self._trainer is not None else ""

    def configure_callbacks(self):
        # Every run logs throughput and memory (perf/*), whatever `callbacks=` says: callbacks=none turns off
        # checkpoints, not measurement. A PerfMonitor the trainer already has (conf/callbacks/default.yaml) wins.
        from lnrl.callbacks import PerfMonitor

        trainer = self._trainer
        if trainer is not None and any(isinstance(c, PerfMonitor) for c in trainer.callbacks):
            return []
        return [PerfMonitor()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lnrl_model_cfg"] = self.model_cfg
