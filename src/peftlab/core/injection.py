"""Applying a method to a model: inject its modules, freeze the base, record what was done.

The model stays a plain ``transformers`` model. What was applied lives in ``model.peftlab_state``;
the trainable set is found by walking the model's :class:`AdapterModule` s plus the base parameters
a partial method selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule
from peftlab.core.registry import spec_for_config
from peftlab.core.targeting import find_parameters

STATE_ATTRIBUTE = "peftlab_state"


@dataclass
class Injection:
    """What a method's ``inject`` reports back to the core.

    ``selected``: names of *base* parameters the method trains (partial methods, full fine-tuning).
    ``created``: names of parameters it added directly to base modules (e.g. BitFit's missing biases).
    ``count_trainable``: the survey's trainable count when it is not the plain sum of numels.
    ``hooks``: handles removed when the method is taken off.
    """

    selected: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    count_trainable: Callable[[nn.Module], int] | None = None
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)


@dataclass
class PeftState:
    """Attached to an adapted model as ``model.peftlab_state``."""

    config: MethodConfig
    injection: Injection
    base_model: dict = field(default_factory=dict)  # the base's identity before injection (serialization.base_model_info)

    @property
    def method(self) -> str:
        return self.config.method


class AlreadyAdaptedError(UserError, RuntimeError):
    pass


def peft_state(model: nn.Module) -> PeftState | None:
    return model.__dict__.get(STATE_ATTRIBUTE)


def apply_config(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Apply ``config``'s method to ``model`` in place and return it."""
    existing = peft_state(model)
    if existing is not None:
        raise AlreadyAdaptedError(
            f"this model already carries {existing.method!r}; load a fresh base model, or use a hybrid "
            f"method (e.g. 'mam', 'unipelt') to combine methods"
        )
    from peftlab.core.serialization import base_model_info  # serialization builds on this module

    base_model = base_model_info(model)
    spec = spec_for_config(config)
    injection = spec.inject(model, config)
    if config.modules_to_save:
        injection.selected.extend(find_parameters(model, config.modules_to_save))
    model.__dict__[STATE_ATTRIBUTE] = PeftState(config=config, injection=injection, base_model=base_model)
    freeze_all_but_adapter(model)
    injection.hooks.append(_keep_inputs_differentiable_under_checkpointing(model))
    return model


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
        if torch.is_grad_enabled() and _checkpointing(model):
            if isinstance(output, torch.Tensor) and not output.requires_grad:
                output.requires_grad_(True)

    return model.get_input_embeddings().register_forward_hook(mark_requires_grad)


def _checkpointing(model: nn.Module) -> bool:
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))
