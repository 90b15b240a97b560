"""Several named adapters on one frozen base, with HF peft's names: list, switch, switch off, delete, and
run a batch whose rows use different adapters.

    peftlab.apply(model, "lora", adapter_name="sst2")            # the first added is active
    peftlab.apply(model, "lora", adapter_name="mrpc", rank=16)   # added beside it, inactive
    peftlab.set_adapter(model, "mrpc")
    with peftlab.disable_adapters(model):
        base_logits = model(**batch).logits
    model(**batch, adapter_names=["sst2", "mrpc", "__base__"])   # one adapter per row
    model.generate(**batch, adapter_names=[...])

Each adapter lives in its own layers (:attr:`~peftlab.core.state.PeftState.self_contained`); a layer of an
inactive adapter passes its input to the base unchanged (:class:`~peftlab.core.layers.AdapterLayer`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterLayer, AdapterModule
from peftlab.core.merging import unload
from peftlab.core.routing import BASE, MixedBatchError, rows_use
from peftlab.core.state import (
    ACTIVE_ATTRIBUTE,
    ROUTING_ATTRIBUTE,
    active_adapters,
    adapter_states,
    named_adapter_parameters,
)
from peftlab.core.targeting import replace_module
from peftlab.core.token_rows import TrainedTokens


class AdapterNameError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def list_adapters(model: nn.Module) -> list[str]:
    """The names of the adapters on ``model``, in the order they were added."""
    return list(adapter_states(model))


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make ``names`` (one name or several) the adapters in use: their layers run and their parameters train;
    every other adapter passes its layers' inputs through unchanged and is frozen."""
    wanted = [names] if isinstance(names, str) else list(names)
    _require_known(model, wanted)
    if not wanted:
        raise AdapterNameError("set_adapter needs at least one adapter name; to run the bare base use "
                               "`with peftlab.disable_adapters(model):`")
    _require_unmerged(model, "switch adapters")
    _require_switchable(model)
    _require_disjoint_token_rows(model, wanted)
    for module in _adapter_modules(model):
        module.active = module.adapter_name in wanted
    model.__dict__[ACTIVE_ATTRIBUTE] = wanted
    _train_only_active(model)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model`` runs as the bare base (every adapter layer passes its input through)."""
    if not adapter_states(model):
        raise AdapterNameError("this model carries no adapter to disable")
    _require_unmerged(model, "disable adapters")
    _require_switchable(model)
    flags = [(module, module.active) for module in _adapter_modules(model)]
    for module, _ in flags:
        module.active = False
    try:
        yield
    finally:
        for module, active in flags:
            module.active = active


def delete_adapter(model: nn.Module, name: str) -> None:
    """Take adapter ``name`` off ``model`` (unmerged); if it was in use, the first remaining adapter is."""
    _require_known(model, [name])
    states = adapter_states(model)
    if len(states) == 1:
        unload(model, merge_first=False)
        return
    layers = [(layer_name, layer) for layer_name, layer in model.named_modules()
              if isinstance(layer, AdapterLayer) and layer.adapter_name == name]
    if any(layer.merged for _, layer in layers):
        raise UserError(f"adapter {name!r} is merged into the base weights; peftlab.unmerge(model) before deleting it")
    for layer_name, layer in reversed(layers):  # inner layers first, so outer names stay valid
        replace_module(model, layer_name, layer.release_base())
    while (found := next(((n, m) for n, m in model.named_modules()  # a module registered under several names
                           if isinstance(m, TrainedTokens) and m.adapter_name == name), None)):
        replace_module(model, found[0], found[1].release_base())
    del states[name]
    active = [adapter for adapter in active_adapters(model) if adapter != name] or [next(iter(states))]
    set_adapter(model, active)


@contextlib.contextmanager
def only_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Adapter ``name`` alone in use within the block, the adapters in use before again afterwards (no
    switching when it already is alone in use, so this works for every method on a one-adapter model)."""
    before = active_adapters(model)
    if before == [name]:
        yield
        return
    set_adapter(model, name)
    try:
        yield
    finally:
        set_adapter(model, before)


def install_routing(model: nn.Module) -> None:
    """Let ``model(..., adapter_names=[...])`` and ``model.generate(..., adapter_names=[...])`` run each row
    with its own adapter (``"__base__"``: none)."""
    if ROUTING_ATTRIBUTE in model.__dict__:
        return
    handles = [model.register_forward_pre_hook(_take_adapter_names, with_kwargs=True),
               model.register_forward_hook(_end_rows, always_call=True)]
    generate = getattr(model, "generate", None)
    if generate is not None:
        model.generate = _routed_generate(model, generate)  # an instance attribute: the class is untouched
    model.__dict__[ROUTING_ATTRIBUTE] = handles


def _take_adapter_names(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    names = kwargs.pop("adapter_names", None)
    stack = model.__dict__.setdefault("peftlab_rows_stack", [])
    if names is None:
        stack.append(None)
        return args, kwargs
    check_row_names(model, names)
    scope = rows_use(names)
    scope.__enter__()
    stack.append(scope)
    return args, kwargs


def _end_rows(model: nn.Module, _args: tuple, _output: Any) -> None:
    stack = model.__dict__.get("peftlab_rows_stack")
    scope = stack.pop() if stack else None
    if scope is not None:
        scope.__exit__(None, None, None)


def _routed_generate(model: nn.Module, generate: Any) -> Any:
    @functools.wraps(generate)
    def routed(*args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        if adapter_names is None:
            return generate(*args, **kwargs)
        check_row_names(model, adapter_names)
        with rows_use(adapter_names):
            return generate(*args, **kwargs)

    return routed


def check_row_names(model: nn.Module, names: Sequence[str]) -> None:
    """A mixed batch's names: known adapters (or ``"__base__"``) of a model whose adapters can split rows."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise MixedBatchError(f"adapter_names must be a list with one adapter name per row, not {names!r}")
    _require_known(model, [name for name in names if name != BASE])
    _require_unmerged(model, "run a mixed-adapter batch")
    _require_switchable(model)
    fixed = sorted({type(m).__name__ for m in _adapter_modules(model) if isinstance(m, AdapterLayer)
                    and not m.routes_rows and m.adapter_name in names})
    if fixed:
        raise MixedBatchError(
            f"adapters of {', '.join(fixed)} layers share one input across layers and cannot split a batch by "
            f"rows; run those rows in a batch of their own (peftlab.set_adapter)"
        )


def _adapter_modules(model: nn.Module) -> list[AdapterModule]:
    return [module for module in model.modules() if isinstance(module, AdapterModule)]


def _require_known(model: nn.Module, names: Sequence[str]) -> None:
    known = list_adapters(model)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise AdapterNameError(
            f"no adapter named {', '.join(map(repr, unknown))} on this model; it has "
            f"{', '.join(map(repr, known)) or 'none'}" + (f", or {BASE!r} for the bare base in adapter_names")
        )


def _require_unmerged(model: nn.Module, action: str) -> None:
    if any(isinstance(m, (AdapterLayer, TrainedTokens)) and m.merged for m in model.modules()):
        raise UserError(f"cannot {action} while an adapter is merged into the base weights; peftlab.unmerge(model) first")


def _require_switchable(model: nn.Module) -> None:
    for state in adapter_states(model).values():
        if not state.self_contained:
            raise UserError(
                f"adapter {state.name!r} ({state.method}) cannot be switched off or split by rows: it trains the "
                f"base's own parameters or works through forward hooks; use peftlab.unload(model, "
                f"merge_first=False) on a copy, or a fresh base model, to run without it"
            )


def _require_disjoint_token_rows(model: nn.Module, names: Sequence[str]) -> None:
    """Adapters in use together may not give the same token its own row each (``token_indices``)."""
    owner: dict[int, str] = {}
    for name in names:
        for index in adapter_states(model)[name].config.token_indices:
            if owner.setdefault(index, name) != name:
                raise UserError(f"adapters {owner[index]!r} and {name!r} both train the embedding row of token {index}; "
                                f"use them one at a time (or in a mixed batch, one per row)")


def _train_only_active(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    states = adapter_states(model)
    for name in active_adapters(model):
        for _, parameter in named_adapter_parameters(model, states[name]):
            parameter.requires_grad_(True)


__all__ = [
    "AdapterNameError",
    "MixedBatchError",
    "delete_adapter",
    "disable_adapters",
    "install_routing",
    "list_adapters",
    "only_adapter",
    "set_adapter",
]
