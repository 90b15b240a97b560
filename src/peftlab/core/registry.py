"""The one registry: method name -> family, config class, how to apply it.

A method file ends with ``register(MethodSpec(...))``. Nothing else lists methods. The first lookup imports
the methods package (``METHODS_PACKAGE``, as :mod:`peftlab.tasks` finds its task modules), so every method is
registered however the library was entered, while a command that only parses its arguments imports none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

from peftlab.core.architectures import ARCHITECTURES
from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.hooks import TrainingHooks
from peftlab.core.state import Injection

Family = Literal["baseline", "additive", "partial", "reparameterized", "hybrid", "unified"]
FAMILIES: tuple[Family, ...] = ("baseline", "additive", "partial", "reparameterized", "hybrid", "unified")
ALL_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)  # the families core/architectures.py knows

InjectFn = Callable[[nn.Module, MethodConfig], Injection]


@dataclass(frozen=True, kw_only=True)
class MethodHooks:
    """A method's departures from the generic behaviour, each left unset unless the method needs it.

    A misspelt name fails here, at construction (``TypeError``); :func:`register` checks the values.
    """

    # peftlab.training_hooks(model), once per model: per-step work (AdaLoRA's budget, Child-Tuning's masks).
    training_hooks: Callable[[nn.Module, MethodConfig], TrainingHooks] | None = None
    # peftlab.parameter_groups(model, lr, weight_decay): the optimizer's groups (LoRA+'s learning rate for B).
    parameter_groups: Callable[[nn.Module, MethodConfig, float, float], list[dict[str, Any]]] | None = None
    # peftlab.make_optimizer, over those groups: the method's own optimizer (QLoRA's paged AdamW on CUDA).
    optimizer: Callable[[nn.Module, MethodConfig, list[dict[str, Any]]], torch.optim.Optimizer] | None = None
    # save_adapter: the tensors to save, when not the adapter's parameters and buffers (folded prefixes).
    export_state: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    # load_adapter: takes the saved tensors into the model, in place of the generic name-by-name copy.
    import_state: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
    # peftlab.method_report(model), at save and in metrics.json: what the trained state says (AdaLoRA's ranks).
    report: Callable[[nn.Module], dict[str, Any]] | None = None
    # prepended_positions(model): positions put in front of every input (prompt tuning's virtual tokens).
    prepended_positions: Callable[[MethodConfig], int] | None = None
    # merge(), after a merge moved the outputs past tolerance (model, output before): why, and what to pass.
    merge_note: Callable[[nn.Module, torch.Tensor], str | None] | None = None
    # Few-shot scoring: False if a forward pass cannot continue from a KV cache of the prompt's start.
    reuses_kv_cache: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """Everything the core needs to know about one method."""

    name: str
    family: Family
    config_class: type[MethodConfig]
    inject: InjectFn
    paper: str
    summary: str
    mergeable: bool = False
    architectures: tuple[str, ...] = ALL_ARCHITECTURES
    hooks: MethodHooks = field(default_factory=MethodHooks)
    # A partial method that trains copies in the adapter (token rows), not base parameters in place: it may share
    # the base with other named adapters, which other partial methods may not.
    shares_base: bool = False

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "summary": self.summary,
            "mergeable": self.mergeable,
            "architectures": list(self.architectures),
            "options": self.config_class.field_help(),
        }


class UnknownMethodError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, MethodSpec] = {}
METHODS_PACKAGE = "peftlab.methods"  # importing it registers every method file in it
_discovered = False


def _registered() -> dict[str, MethodSpec]:
    """The registry, with every method of ``METHODS_PACKAGE`` in it (imported on the first lookup)."""
    global _discovered
    if not _discovered:
        _discovered = True  # first: a method's own import may look up the methods registered before it
        importlib.import_module(METHODS_PACKAGE)
    return _REGISTRY


def register(spec: MethodSpec) -> MethodSpec:
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; families are {FAMILIES}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    unknown = [name for name in spec.architectures if name not in ALL_ARCHITECTURES]
    if unknown:
        raise ValueError(f"{spec.name}: unknown architectures {unknown}; known: {', '.join(ALL_ARCHITECTURES)}")
    if spec.config_class.method != spec.name:
        raise ValueError(f"{spec.config_class.__name__}.method is {spec.config_class.method!r}, not {spec.name!r}")
    _check_hooks(spec)
    _REGISTRY[spec.name] = spec
    return spec


def _check_hooks(spec: MethodSpec) -> None:
    hooks = spec.hooks
    if not isinstance(hooks, MethodHooks):
        raise TypeError(f"{spec.name}: hooks must be a MethodHooks, not {type(hooks).__name__}")
    if not isinstance(hooks.reuses_kv_cache, bool):
        kind = type(hooks.reuses_kv_cache).__name__
        raise TypeError(f"{spec.name}: hook 'reuses_kv_cache' must be a bool, not {kind}")
    for name in (f.name for f in fields(hooks) if f.name != "reuses_kv_cache"):
        hook = getattr(hooks, name)
        if hook is not None and not callable(hook):
            raise TypeError(f"{spec.name}: hook {name!r} must be callable or None, not {type(hook).__name__}")


def get_method(name: str) -> MethodSpec:
    registered = _registered()
    try:
        return registered[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(registered))} (see `peftlab methods`)"
        ) from None


def all_methods() -> list[MethodSpec]:
    """Registered methods, grouped by family in the survey's order."""
    return sorted(_registered().values(), key=lambda spec: (FAMILIES.index(spec.family), spec.name))


def method_names(family: Family | None = None) -> list[str]:
    return [spec.name for spec in all_methods() if family is None or spec.family == family]


def spec_for_config(config: MethodConfig) -> MethodSpec:
    return get_method(config.method)


def config_class(name: str) -> type[MethodConfig]:
    return get_method(name).config_class


def describe_all(names: Iterable[str] | None = None) -> list[dict[str, object]]:
    chosen = set(names) if names is not None else None
    return [spec.describe() for spec in all_methods() if chosen is None or spec.name in chosen]
