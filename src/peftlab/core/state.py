"""What a method left on a model: the record of its injection, and the parameters and buffers it trains.

``apply_config`` (``core.injection``) records one :class:`PeftState` per named adapter in
``model.peftlab_adapters`` and the names in use in ``model.peftlab_active``; everything else reads the
adapter in use through :func:`peft_state`. The trainable set is found by walking the model's
:class:`AdapterModule` s of that adapter plus the base parameters a partial method selected, never by
parameter names. An adapter's tensors are named as if it were alone on the base: the ``base_layer`` hops
through other adapters' layers are left out, so the names do not depend on what else the model carries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule

ADAPTERS_ATTRIBUTE = "peftlab_adapters"
ACTIVE_ATTRIBUTE = "peftlab_active"
CHECKPOINT_HOOK_ATTRIBUTE = "peftlab_checkpoint_hook"  # one for the model, removed with its last adapter
ROUTING_ATTRIBUTE = "peftlab_routing"  # the hooks that take adapter_names (core.adapters.install_routing)
DEFAULT_ADAPTER = "default"


@dataclass
class Injection:
    """What a method's ``inject`` reports back to the core.

    ``selected``: names of *base* parameters the method trains (partial methods, full fine-tuning).
    ``created``: names of parameters it added directly to base modules (e.g. BitFit's missing biases).
    ``count_trainable``: the survey's trainable count when it is not the plain sum of numels.
    ``count_note``: what that count counts, shown beside it (e.g. ProPETL's 1-bit masks).
    ``hooks``: handles removed when the method is taken off.
    """

    selected: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    count_trainable: Callable[[nn.Module], int] | None = None
    count_note: str = ""
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)


@dataclass
class PeftState:
    """Attached to an adapted model as ``model.peftlab_state``."""

    config: MethodConfig
    injection: Injection
    base_model: dict = field(default_factory=dict)  # the base's identity before injection (base_identity.base_model_info)
    name: str = DEFAULT_ADAPTER
    alters_base: bool = False  # a layer changed the frozen weight it wraps (AdapterLayer.alters_base)

    @property
    def self_contained(self) -> bool:
        """Everything it adds lives in its own layers: it trains no base parameter, leaves the base weights
        as they were and hooks no forward, so it can sit beside other adapters, be switched off, and split a
        batch by rows."""
        injection = self.injection
        return not (injection.selected or injection.created or injection.hooks or self.alters_base)

    @property
    def method(self) -> str:
        return self.config.method


class SeveralActiveError(UserError, RuntimeError):
    pass


def adapter_states(model: nn.Module) -> dict[str, PeftState]:
    """Every named adapter on ``model``, in the order they were added (empty for a bare model)."""
    return model.__dict__.get(ADAPTERS_ATTRIBUTE, {})


def active_adapters(model: nn.Module) -> list[str]:
    return list(model.__dict__.get(ACTIVE_ATTRIBUTE, []))


def peft_state(model: nn.Module) -> PeftState | None:
    """The adapter in use: the one active adapter (None on a bare model); an error when several are active,
    since what follows (training, saving, merging) is about one adapter."""
    active = active_adapters(model)
    if not active:
        return None
    if len(active) > 1:
        raise SeveralActiveError(
            f"adapters {', '.join(active)} are all active; this needs one: peftlab.set_adapter(model, NAME) first"
        )
    return adapter_states(model)[active[0]]


def adapter_modules(model: nn.Module, adapter_name: str) -> Iterator[tuple[str, AdapterModule]]:
    """``adapter_name``'s modules, named as if that adapter were alone on the base model."""
    for module_name, module in _named_modules_alone(model, adapter_name, "", set()):
        if isinstance(module, AdapterModule) and module.adapter_name == adapter_name:
            yield module_name, module


def _named_modules_alone(module: nn.Module, adapter_name: str, prefix: str,
                         seen: set[int]) -> Iterator[tuple[str, nn.Module]]:
    if id(module) in seen:
        return
    seen.add(id(module))
    yield prefix, module
    others_layer = isinstance(module, AdapterModule) and module.adapter_name != adapter_name
    for name, child in module._modules.items():
        if child is None:
            continue
        hop = others_layer and name == "base_layer"  # another adapter's wrapper: name through it as if absent
        child_prefix = prefix if hop else (f"{prefix}.{name}" if prefix else name)
        yield from _named_modules_alone(child, adapter_name, child_prefix, seen)


def adapter_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters the adapter in use trains, with their names in ``model`` (as if alone on it)."""
    state = peft_state(model)
    if state is None:
        raise ValueError("this model carries no peftlab method; call peftlab.apply(model, method) first")
    yield from named_adapter_parameters(model, state)


def named_adapter_parameters(model: nn.Module, state: PeftState) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters of the adapter ``state`` records, whether it is in use or not."""
    seen: set[int] = set()
    for module_name, module in adapter_modules(model, state.name):
        for name, parameter in module.adapter_parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                yield (f"{module_name}.{name}" if module_name else name), parameter
    named = dict(model.named_parameters(remove_duplicate=False))
    for name in dict.fromkeys(state.injection.selected + state.injection.created):
        parameter = named[name]
        if id(parameter) not in seen:
            seen.add(id(parameter))
            yield name, parameter


def adapter_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    state = peft_state(model)
    if state is None:
        return
    for module_name, module in adapter_modules(model, state.name):
        for name, buffer in module.adapter_buffers():
            yield (f"{module_name}.{name}" if module_name else name), buffer


def remove_adapter_records(model: nn.Module) -> None:
    """Forget every adapter of ``model`` and remove their hooks (its layers are the caller's to take out)."""
    for state in adapter_states(model).values():
        for hook in state.injection.hooks:
            hook.remove()
    checkpoint_hook = model.__dict__.pop(CHECKPOINT_HOOK_ATTRIBUTE, None)
    if checkpoint_hook is not None:
        checkpoint_hook.remove()
    for handle in model.__dict__.pop(ROUTING_ATTRIBUTE, []):
        handle.remove()
    model.__dict__.pop("generate", None)  # the instance's routed generate (core.adapters.install_routing)
    model.__dict__.pop(ADAPTERS_ATTRIBUTE, None)
    model.__dict__.pop(ACTIVE_ATTRIBUTE, None)


def numel_trained_beside_layers(model: nn.Module, state: PeftState) -> int:
    """Elements the adapter trains outside its own layers: base parameters it selected or created, the
    trained copies of its ``modules_to_save`` (counted in full, beside a method's own count) and its token rows."""
    named = dict(model.named_parameters())
    total = sum(named[name].numel() for name in dict.fromkeys(state.injection.selected + state.injection.created))
    for _, module in adapter_modules(model, state.name):
        # a SavedModule (core.saved_modules) or the embedding's TrainedTokens (core.token_rows), which build on this
        if hasattr(module, "trained") or hasattr(module, "token_rows"):
            total += sum(p.numel() for _, p in module.adapter_parameters())
    return total
