"""The applied method's hooks, asked through the model.

Each function finds the method applied to ``model`` (:func:`~peftlab.core.state.peft_state`), calls the
matching field of its :class:`~peftlab.core.registry.MethodHooks`, and falls back to the generic behaviour
where the method sets none (or no method is applied). :mod:`peftlab.core.hooks` shows a loop calling them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftlab.core.hooks import TrainingHooks
from peftlab.core.registry import get_method
from peftlab.core.state import peft_state

_HOOKS_ATTRIBUTE = "peftlab_training_hooks"


def training_hooks(model: nn.Module) -> TrainingHooks:
    """The adapted model's training hooks (the same object on every call)."""
    existing = model.__dict__.get(_HOOKS_ATTRIBUTE)
    if existing is not None:
        return existing
    state = peft_state(model)
    factory = get_method(state.method).hooks.training_hooks if state else None
    hooks = factory(model, state.config) if factory is not None else TrainingHooks()
    model.__dict__[_HOOKS_ATTRIBUTE] = hooks
    return hooks


def parameter_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups: one group of the trainable parameters, unless the method asks otherwise."""
    state = peft_state(model)
    factory = get_method(state.method).hooks.parameter_groups if state else None
    if factory is not None:
        return factory(model, state.config, lr, weight_decay)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return [{"params": parameters, "lr": lr, "weight_decay": weight_decay}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer over :func:`parameter_groups`: the method's own when it asks for one, AdamW otherwise."""
    groups = parameter_groups(model, lr, weight_decay)
    state = peft_state(model)
    factory = get_method(state.method).hooks.optimizer if state else None
    return factory(model, state.config, groups) if factory is not None else adamw(groups)


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over every tensor) where torch has that kernel for the parameters' device:
    the same update as the per-tensor loop (equal to float rounding), in less time: one pass over all the
    parameters instead of several small kernels per tensor."""
    parameters = [p for group in groups for p in group["params"]]
    fusable = bool(parameters) and all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES
                                       for p in parameters)
    return torch.optim.AdamW(groups, fused=True) if fusable else torch.optim.AdamW(groups)


def method_report(model: nn.Module) -> dict[str, Any]:
    """What the applied method's trained state says about itself (its ``report`` hook; AdaLoRA: its final
    per-layer ranks), for ``adapter_config.json`` and ``metrics.json``; empty for other methods."""
    state = peft_state(model)
    reporter = get_method(state.method).hooks.report if state else None
    return reporter(model) if reporter is not None else {}


def prepended_positions(model: nn.Module) -> int:
    """How many positions the applied method puts in front of every input (its ``prepended_positions`` hook;
    prompt tuning: its virtual tokens), which a model with learned positions no longer has for the input."""
    state = peft_state(model)
    counter = get_method(state.method).hooks.prepended_positions if state else None
    return counter(state.config) if counter is not None else 0


def reuses_kv_cache(model: nn.Module) -> bool:
    """Whether a KV cache of a prompt's start, read once, can be reused under several continuations: False
    where the applied method declares ``MethodHooks(reuses_kv_cache=False)`` (a forward pass that could not
    continue from a cache; none of today's methods, prompt and prefix tuning included)."""
    state = peft_state(model)
    return get_method(state.method).hooks.reuses_kv_cache if state else True
