"""Applying a method to a model: inject its modules, freeze the base, record what was done.

The model stays a plain ``transformers`` model. What was applied lives in ``model.peftlab_adapters``
(:mod:`peftlab.core.state`), and only the active adapter's parameters keep ``requires_grad``. A model may
carry several named adapters when each lives in its own layers (:attr:`PeftState.self_contained`); the
first one added is active, later ones wait for :func:`peftlab.set_adapter`, as in HF peft.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from peftlab.core.adapters import install_routing
from peftlab.core.base_identity import base_model_info
from peftlab.core.checkpointing import checkpointing_enabled
from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.layers import OFFLOAD_ADVICE, AdapterLayer, AdapterModule, OffloadedWeightsError
from peftlab.core.registry import spec_for_config
from peftlab.core.saved_modules import wrap_saved_modules
from peftlab.core.state import (
    ACTIVE_ATTRIBUTE,
    ADAPTERS_ATTRIBUTE,
    CHECKPOINT_HOOK_ATTRIBUTE,
    DEFAULT_ADAPTER,
    Injection,
    PeftState,
    active_adapters,
    adapter_parameters,
    adapter_states,
)
from peftlab.core.targeting import find_parameters
from peftlab.core.token_rows import wrap_token_rows


class AlreadyAdaptedError(UserError, RuntimeError):
    pass


def apply_config(model: nn.Module, config: MethodConfig, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Apply ``config``'s method to ``model`` in place as adapter ``adapter_name`` and return it.

    All or nothing: targets and weights are checked before anything changes, and if anything fails while
    the method is put on, the model is put back as it was given (see :func:`restored_on_error`) before the
    error propagates.
    """
    check_adapter_name(adapter_name)
    states = adapter_states(model)
    if adapter_name in states:
        raise AlreadyAdaptedError(
            f"this model already carries {states[adapter_name].method!r} as adapter {adapter_name!r}; give the new "
            f"one another adapter_name to add it beside, remove the old one (peftlab.delete_adapter), or use a "
            f"hybrid method (e.g. 'mam', 'unipelt') to combine methods in one adapter"
        )
    spec = spec_for_config(config)
    if states and spec.family in ("partial", "baseline") and not spec.shares_base:  # known before injecting
        _refuse_to_share(states, PeftState(config, Injection(selected=["(base parameters)"]), name=adapter_name))
    _refuse_offloaded_weights(model, config.method)
    if config.modules_to_save:
        find_parameters(model, config.modules_to_save, role="modules_to_save pattern")
    base_model = next(iter(states.values())).base_model if states else base_model_info(model)
    modules_before = {id(module) for module in model.modules() if isinstance(module, AdapterModule)}
    with restored_on_error(model):
        injection = spec.inject(model, config)
        if config.token_indices:  # before modules_to_save, which refuses to copy a module an adapter wraps
            wrap_token_rows(model, config.token_indices, injection.selected + injection.created)
        if config.modules_to_save:
            in_place = wrap_saved_modules(model, config.modules_to_save, injection.selected + injection.created)
            injection.selected.extend(name for name in in_place if name not in injection.selected)
        added = [m for m in model.modules() if isinstance(m, AdapterModule) and id(m) not in modules_before]
        alters_base = any(isinstance(m, AdapterLayer) and m.alters_base for m in added)
        state = PeftState(config=config, injection=injection, base_model=base_model, name=adapter_name,
                          alters_base=alters_base)
        _refuse_to_share(states, state)
        for module in added:
            module.adapter_name = adapter_name
            module.active = not states
        model.__dict__.setdefault(ADAPTERS_ATTRIBUTE, {})[adapter_name] = state
        if not states:
            model.__dict__[ACTIVE_ATTRIBUTE] = [adapter_name]
            model.__dict__[CHECKPOINT_HOOK_ATTRIBUTE] = _keep_inputs_differentiable_under_checkpointing(model)
            install_routing(model)
        freeze_all_but_adapter(model)
    return model


def check_adapter_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "." in name or name.startswith("__"):
        raise ValueError(
            f"adapter_name {name!r} is not usable: give a non-empty name without '/' or '.' (it names a "
            f"subfolder and prefixes tensor names) that does not start with '__' (reserved, e.g. '__base__')"
        )


def _refuse_to_share(states: dict[str, PeftState], new: PeftState) -> None:
    """Several adapters on one base need each to live in its own layers: one that trains the base's own
    parameters or works through forward hooks cannot be switched off, nor told apart in a mixed batch."""
    if not states:
        return
    for state in (*states.values(), new):
        if not state.self_contained:
            raise AlreadyAdaptedError(
                f"adapter {state.name!r} ({state.method}) cannot share the base with another adapter: it "
                f"{_why_not_self_contained(state)}. Several adapters on one base work for methods that add their "
                f"own layers (LoRA and its family, AdaLoRA, (IA)3, sequential and parallel adapters); load "
                f"a fresh base model for this one"
            )


def _why_not_self_contained(state: PeftState) -> str:
    injection = state.injection
    if injection.selected or injection.created:
        return "trains the base model's own parameters in place"
    if state.alters_base:
        return "changes the base weights it wraps (a residual init such as PiSSA or OLoRA)"
    return "changes the model's forward through hooks (soft prompts, prefixes or gates)"


@contextlib.contextmanager
def restored_on_error(model: nn.Module) -> Iterator[None]:
    """On an exception in the block, put ``model`` back as it was when the block began, then re-raise.

    Restores every module's attributes (submodules, parameters, buffers, hooks, configs) and the
    ``requires_grad`` flags; adapter layers added in the block give back what they changed in place
    (:meth:`AdapterLayer.release_base`, e.g. PiSSA's residual, exact up to float rounding).
    """
    before = [(module, dict(vars(module))) for module in model.modules()]
    containers = [
        (value, copy.copy(value)) for _, attributes in before for value in attributes.values()
        if isinstance(value, (dict, set, list))
    ]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    layers_before = {id(module) for module, _ in before if isinstance(module, AdapterLayer)}
    try:
        yield
    except BaseException:
        added = [m for m in model.modules() if isinstance(m, AdapterLayer) and id(m) not in layers_before]
        for container, saved in containers:  # in place: hook handles hold references to these
            _refill(container, saved)
        for module, attributes in before:
            module.__dict__.clear()
            module.__dict__.update(attributes)
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
        with torch.no_grad():
            for layer in added:
                if not layer.merged:
                    layer.release_base()
        raise


def _refill(container: dict | set | list, saved: dict | set | list) -> None:
    container.clear()
    if isinstance(container, list):
        container.extend(saved)
    else:
        container.update(saved)


def _refuse_offloaded_weights(model: nn.Module, method: str) -> None:
    """Weights that ``device_map`` offloaded to the CPU or disk sit on the meta device between forwards;
    a method would build its parameters there, without values, and the outputs would be garbage."""
    offloaded = [
        name or type(model).__name__ for name, module in model.named_modules()
        if any(t.is_meta for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))
    ]
    if offloaded:
        shown = ", ".join(offloaded[:4]) + (f" and {len(offloaded) - 4} more" if len(offloaded) > 4 else "")
        raise OffloadedWeightsError(
            f"cannot apply {method!r}: {len(offloaded)} module(s) hold weights on the meta device ({shown}), "
            f"as accelerate leaves layers that device_map offloads to 'cpu' or 'disk'. {OFFLOAD_ADVICE}"
        )


def freeze_all_but_adapter(model: nn.Module) -> None:
    """Frozen base and inactive adapters, trainable active adapter: ``requires_grad`` is the single source of
    truth for optimizers."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if len(active_adapters(model)) == 1:
        for _, parameter in adapter_parameters(model):
            parameter.requires_grad_(True)


def _keep_inputs_differentiable_under_checkpointing(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """With a frozen base, reentrant checkpointing sees no input that needs grad and silently skips
    the backward of every checkpointed layer; marking the embedding output fixes that."""

    def mark_requires_grad(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and checkpointing_enabled(model):
            if isinstance(output, torch.Tensor) and not output.requires_grad:
                output.requires_grad_(True)

    return model.get_input_embeddings().register_forward_hook(mark_requires_grad)
