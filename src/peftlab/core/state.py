"""What a method left on a model: the record of its injection, and the parameters and buffers it trains.

``apply_config`` (``core.injection``) writes a :class:`PeftState` into ``model.peftlab_state``; everything
else reads it through :func:`peft_state`. The trainable set is found by walking the model's
:class:`AdapterModule` s plus the base parameters a partial method selected, never by parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.layers import AdapterModule

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


def peft_state(model: nn.Module) -> PeftState | None:
    return model.__dict__.get(STATE_ATTRIBUTE)


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
