"""What a method may need from the training loop, as a small contract any loop can follow.

Most methods need nothing: an optimizer over the parameters with ``requires_grad`` is enough.
Methods that act during training (AdaLoRA's rank budget, Child-Tuning's gradient masks) or that
want their own learning rates (LoRA+) or optimizer (QLoRA) supply them as fields of their
:class:`~peftlab.core.registry.MethodHooks` (``training_hooks``, ``parameter_groups``, ``optimizer``),
where each field's type and the moment it is called are written; :mod:`peftlab.core.method_hooks` asks
an adapted model's method for them.

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
