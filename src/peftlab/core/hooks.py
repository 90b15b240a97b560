"""What a method may need from the training loop, as a small contract any loop can follow.

Most methods need nothing: an optimizer over the parameters with ``requires_grad`` is enough.
Methods that act during training (AdaLoRA's rank budget, Child-Tuning's gradient masks) or that
want their own learning rates (LoRA+) or optimizer (QLoRA) supply them as fields of their
:class:`~peftlab.core.registry.MethodHooks` (``training_hooks``, ``parameter_groups``, ``optimizer``),
where each field's type and the moment it is called are written.

A training loop (ours, HF ``Trainer`` through ``peftlab.interop.hf_trainer``, or yours) calls::

    hooks = peftlab.training_hooks(model)
    hooks.prepare(model, batches)                  # once, before training; ``batches`` an iterable of inputs
    optimizer = peftlab.make_optimizer(model, lr, weight_decay)  # AdamW over parameter_groups, by default
    for step, batch in enumerate(loader):
        loss = model(**batch).loss + hooks.regularization(model)
        loss.backward()
        hooks.before_optimizer_step(model, step)  # gradients are final here (after clipping/accumulation)
        optimizer.step()
        hooks.after_optimizer_step(model, step)
        optimizer.zero_grad()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from peftlab.core.registry import get_method
from peftlab.core.state import peft_state


class TrainingHooks:
    """The do-nothing hooks; methods that need per-step work subclass it."""

    def prepare(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> None:
        """Called once before the first step (e.g. a Fisher-information estimate)."""

    def regularization(self, model: nn.Module) -> torch.Tensor | float:
        """A term added to the task loss each step (e.g. an orthogonality penalty)."""
        return 0.0

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After backward (and any gradient accumulation), before ``optimizer.step()``."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """After ``optimizer.step()``, before ``zero_grad``."""

    def needs_prepare(self) -> bool:
        """Whether :meth:`prepare` does anything (so loops can skip building its batches)."""
        return type(self).prepare is not TrainingHooks.prepare

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint for an exact resume (e.g. importance averages, random generator state)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


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
