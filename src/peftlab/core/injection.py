"""Applying a method to a model: inject its modules, freeze the base, record what was done.

The model stays a plain ``transformers`` model. What was applied lives in ``model.peftlab_state``;
the trainable set is found by walking the model's :class:`AdapterModule` s plus the base parameters
a partial method selected.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.checkpointing import checkpointing_enabled
from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.layers import OFFLOAD_ADVICE, AdapterLayer, AdapterModule, OffloadedWeightsError
from peftlab.core.registry import spec_for_config
from peftlab.core.targeting import find_parameters

STATE_ATTRIBUTE = "peftlab_state"


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

    @property
    def method(self) -> str:
        return self.config.method


class AlreadyAdaptedError(UserError, RuntimeError):
    pass


def peft_state(model: nn.Module) -> PeftState | None:
    return model.__dict__.get(STATE_ATTRIBUTE)


def apply_config(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Apply ``config``'s method to ``model`` in place and return it.

    All or nothing: targets and weights are checked before anything changes, and if anything fails while
    the method is put on, the model is put back as it was given (see :func:`restored_on_error`) before the
    error propagates.
    """
    existing = peft_state(model)
    if existing is not None:
        raise AlreadyAdaptedError(
            f"this model already carries {existing.method!r}; load a fresh base model, or use a hybrid "
            f"method (e.g. 'mam', 'unipelt') to combine methods"
        )
    from peftlab.core.base_identity import base_model_info  # base_identity builds on this module

    spec = spec_for_config(config)
    _refuse_offloaded_weights(model, config.method)
    if config.modules_to_save:
        find_parameters(model, config.modules_to_save, role="modules_to_save pattern")
    base_model = base_model_info(model)
    with restored_on_error(model):
        injection = spec.inject(model, config)
        if config.modules_to_save:  # again: a module the method wrapped now has other parameter names
            injection.selected.extend(find_parameters(model, config.modules_to_save, role="modules_to_save pattern"))
        model.__dict__[STATE_ATTRIBUTE] = PeftState(config=config, injection=injection, base_model=base_model)
        freeze_all_but_adapter(model)
        injection.hooks.append(_keep_inputs_differentiable_under_checkpointing(model))
    return model


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


def adapter_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters the applied method trains, with their names in ``model``."""
    state = peft_state(model)
    if state is None:
        raise ValueError("this model carries no peftlab method; call peftlab.apply(model, method) first")
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, AdapterModule):
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
    for module_name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            for name, buffer in module.adapter_buffers():
                yield (f"{module_name}.{name}" if module_name else name), buffer


def freeze_all_but_adapter(model: nn.Module) -> None:
    """Frozen base, trainable method: ``requires_grad`` is the single source of truth for optimizers."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
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
