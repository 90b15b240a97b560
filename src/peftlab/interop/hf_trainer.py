"""Call a method's training hooks (:mod:`peftlab.core.hooks`) from HF ``transformers.Trainer``.

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[PeftlabCallback()])

Events used (transformers 5.x ``TrainerCallback``), in the order the Trainer fires them:

* ``on_train_begin``: ``hooks.prepare(model, batches)`` on the first ``prepare_batches`` training batches
  (all of one pass when None) when the method needs it (Child-Tuning D), and a forward hook that adds
  ``hooks.regularization(model)`` to ``outputs.loss`` while the model trains with gradients enabled
  (AdaLoRA's orthogonality penalty): a callback cannot touch ``compute_loss`` itself.
* ``on_pre_optimizer_step`` (after gradient clipping) -> ``hooks.before_optimizer_step(model, global_step)``.
* ``on_optimizer_step`` (before ``zero_grad``) -> ``hooks.after_optimizer_step(model, global_step)``.
* ``on_train_end``: the forward hook is removed.

``global_step`` counts the optimizer steps done before this one, as in peftlab's own loop. With gradient
accumulation the penalty is added to every micro-batch's loss, so it is scaled like the task loss.
Reading ``prepare``'s batches runs one extra pass over the training loader (it draws from the sampler).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from peftlab.core.hooks import TrainingHooks
from peftlab.core.method_hooks import training_hooks


class PeftlabCallback(TrainerCallback):
    """Runs the adapted model's :class:`~peftlab.core.hooks.TrainingHooks` inside ``Trainer``."""

    def __init__(self, prepare_batches: int | None = None) -> None:
        self.prepare_batches = prepare_batches
        self._model: nn.Module | None = None
        self._hooks: TrainingHooks | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        self._model = model
        self._hooks = training_hooks(model)
        if self._hooks.needs_prepare():
            self._hooks.prepare(model, itertools.islice(train_dataloader, self.prepare_batches))
        if self._handle is None:
            self._handle = model.register_forward_hook(self._add_regularization)

    def _add_regularization(self, module: nn.Module, inputs: Any, outputs: Any) -> Any:
        loss = getattr(outputs, "loss", None)
        if loss is None or not module.training or not torch.is_grad_enabled():
            return outputs
        outputs["loss"] = loss + self._hooks.regularization(module)
        return outputs

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        self._hooks.before_optimizer_step(self._model, state.global_step)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        self._hooks.after_optimizer_step(self._model, state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
