"""Applying a method to a model: inject its modules, freeze the base, record what was done.

The model stays a plain ``transformers`` model. What was applied lives in ``model.peftlab_state``
(:mod:`peftlab.core.state`), and only the method's parameters keep ``requires_grad``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from peftlab.core.base_identity import base_model_info
from peftlab.core.checkpointing import checkpointing_enabled
from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.layers import OFFLOAD_ADVICE, AdapterLayer, OffloadedWeightsError
from peftlab.core.registry import spec_for_config
from peftlab.core.state import STATE_ATTRIBUTE, PeftState, adapter_parameters, peft_state
from peftlab.core.targeting import find_parameters


class AlreadyAdaptedError(UserError, RuntimeError):
    pass


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
