"""Loss registry: `@register_loss(name)` records a loss, `build_loss(name, **cfg)` builds it.

A loss is a class (or a factory function) whose keyword arguments are its hyperparameters and whose
instances are called on `SeqScores`. It declares what it needs so a method can refuse a loss it
cannot feed:

    kind            "pairwise" (chosen/rejected pairs), "group" (k responses per question) or "token"
    needs_reference whether it reads reference-model scores (the methods' shared base serves them,
                    cached or live, to any loss that says so)
    uses_weights    whether it honours per-example `weights`

The call signature is fixed by `kind` (reference scores are passed only to losses that need them):

    pairwise  (policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, weights=None)
    group     (scores, group_ids, is_positive=None, ranks=None[, ref_scores])
    token     (scores=[, ref_scores]) or (logits=, input_ids=, completion_mask=)

`LOSSES` is derived from the registrations; `lnrl/losses/__init__.py` imports every module of the
package, so a new loss file registers itself with no edit elsewhere.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from torch import Tensor

from lnrl.checks import is_number
from lnrl.scoring import check_normalize

KINDS = ("pairwise", "group", "token")
IGNORED_KEYS = ("name", "_target_")  # present in a Hydra `loss:` node passed as build_loss(**cfg.loss)


class LossOutput(NamedTuple):
    loss: Tensor                 # scalar to backpropagate
    per_example: Tensor          # [B] per pair / sequence / response ([G] per question for aft)
    metrics: dict[str, Tensor]   # detached scalars, named like TRL's ("rewards/chosen", ...)


@dataclass(frozen=True)
class LossSpec:
    name: str
    factory: Callable[..., Any]
    kind: str
    needs_reference: bool
    uses_weights: bool
    params: Mapping[str, Any]    # hyperparameter -> default (inspect.Parameter.empty when required)
    accepts_any: bool            # the factory takes **kwargs

    @property
    def config_path(self) -> str:
        return f"lnrl/conf/loss/{self.name}.yaml"


_REGISTRY: dict[str, LossSpec] = {}
LOSSES: Mapping[str, LossSpec] = MappingProxyType(_REGISTRY)


def register_loss(name: str, *, kind: str | None = None, needs_reference: bool | None = None,
                  uses_weights: bool | None = None):
    """Decorator. On a class, `kind`/`needs_reference`/`uses_weights` default to its class
    attributes; on a factory function, pass them here (or set them as function attributes)."""

    def decorate(factory):
        def trait(key: str, given, default):
            value = given if given is not None else getattr(factory, key, default)
            if value is None:
                raise TypeError(f"register_loss({name!r}): {factory.__qualname__} must declare `{key}` "
                                "(class attribute, function attribute or register_loss argument)")
            return value

        spec_kind = trait("kind", kind, None)
        if spec_kind not in KINDS:
            raise ValueError(f"register_loss({name!r}): kind={spec_kind!r} is not one of {', '.join(KINDS)}")
        params, accepts_any = _hyperparameters(factory)
        spec = LossSpec(name=name, factory=factory, kind=spec_kind,
                        needs_reference=bool(trait("needs_reference", needs_reference, False)),
                        uses_weights=bool(trait("uses_weights", uses_weights, False)),
                        params=MappingProxyType(params), accepts_any=accepts_any)
        old = _REGISTRY.get(name)
        # A module re-import (importlib.reload, pytest rewriting) re-registers the same qualified name: allow it.
        if old is not None and _qualname(old.factory) != _qualname(factory):
            raise ValueError(f"loss {name!r} is registered twice: {_qualname(old.factory)} and {_qualname(factory)}")
        _REGISTRY[name] = spec
        if inspect.isclass(factory):  # instances can tell check_compatible who they are
            factory.name = name
        return factory

    return decorate


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _hyperparameters(factory) -> tuple[dict[str, Any], bool]:
    sig = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory)
    params, accepts_any = {}, False
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if inspect.isclass(factory) and i == 0:
            continue  # self
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            params[pname] = p.default
    return params, accepts_any


def check_param(loss: str, field: str, value: Any, ok: bool, expected: str) -> Any:
    """Return `value`, or raise ValueError naming the loss, the field and its config file."""
    if not ok:
        raise ValueError(f"loss {loss!r}: {field}={value!r} is invalid, expected {expected} "
                         f"(loss.{field} in your config, default in lnrl/conf/loss/{loss}.yaml)")
    return value


def check_numeric_params(spec: LossSpec, kwargs: Mapping[str, Any]) -> None:
    """Every hyperparameter whose default is a number must be given a finite number: `loss.beta=abc`
    is named here, not left to a `float('abc')` inside the loss that names no key."""
    for field, value in kwargs.items():
        default = spec.params.get(field, inspect.Parameter.empty)
        if is_number(default):
            check_param(spec.name, field, value, is_number(value), "a finite number")


def discover(package: str) -> list[str]:
    """Import every module of `package` (skipping `_private` ones) so their @register_loss run."""
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
            found.append(info.name)
    return found


def get_spec(loss: str | Any) -> LossSpec:
    """The registry entry of a loss name or of a built loss."""
    name = loss if isinstance(loss, str) else getattr(loss, "name", None)
    if name not in _REGISTRY:
        what = repr(name) if isinstance(loss, str) or name else f"object {type(loss).__name__}"
        raise ValueError(f"unknown loss {what}; registered losses: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_loss(name: str, **kwargs: Any):
    """Build a registered loss from its hyperparameters, e.g. `build_loss(**cfg.loss)`.

    Unknown keys raise TypeError naming the loss and its allowed keys; a bad `normalize` raises
    ValueError. `name` and `_target_` keys from a config node are ignored.
    """
    spec = get_spec(name)
    kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_KEYS}
    unknown = sorted(set(kwargs) - set(spec.params))
    if unknown and not spec.accepts_any:
        raise TypeError(f"loss {name!r} got unknown argument(s) {', '.join(unknown)} "
                        f"(check loss.* in your config or {spec.config_path}); "
                        f"allowed: {', '.join(spec.params) or 'none'}")
    missing = [k for k, d in spec.params.items() if d is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise TypeError(f"loss {name!r} needs argument(s) {', '.join(missing)}")
    if "normalize" in kwargs:
        check_normalize(kwargs["normalize"], f"loss {name!r}: normalize")
    check_numeric_params(spec, kwargs)
    loss = spec.factory(**kwargs)
    if getattr(loss, "name", None) != name:
        try:  # factory-built callables (functions, partials) learn their name so check_compatible finds them
            loss.name = name
        except AttributeError:
            pass
    return loss


def check_compatible(loss: str | Any, *, kind: str | Collection[str], has_reference: bool,
                     has_weights: bool = False, method: str = "this method") -> LossSpec:
    """Raise ValueError unless `method` can train with `loss`. `method` feeds batches of `kind` (one
    kind or several), with reference scores when `has_reference`, with per-example weights when
    `has_weights`. Returns the loss's registry entry."""
    spec = get_spec(loss)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)

    def fits(s: LossSpec) -> bool:
        return (s.kind in kinds and (has_reference or not s.needs_reference)
                and (s.uses_weights or not has_weights))

    if not fits(spec):
        if spec.kind not in kinds:
            why = f"it is a {spec.kind} loss and {method} feeds {' or '.join(kinds)} batches"
        elif spec.needs_reference:
            why = f"it needs reference scores and {method} has no reference model or cached reference log-probs"
        else:
            why = f"it ignores per-example weights and {method} trains with weights"
        usable = sorted(s.name for s in _REGISTRY.values() if fits(s))
        raise ValueError(f"{method} cannot train with loss {spec.name!r}: {why}. "
                         f"Losses it can feed: {', '.join(usable) or 'none'}")
    return spec
