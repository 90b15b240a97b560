"""Which loss a training step computes: the chunked language-model loss where it applies, else the model's.

``--loss auto`` (the default) takes :func:`peftlab.train.speedups.losses.lm_loss` for text-writing tasks on a
model whose output head is a plain linear layer, without FSDP (which shards that head), and the
model's own ``model(**batch).loss`` otherwise; ``--loss chunked`` insists and says why it cannot;
``--loss plain`` always takes the model's own. Both give the same loss and gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from peftlab.train.args import ArgumentError
from peftlab.train.speedups.losses import chunked_loss_problem, lm_loss

LossFunction = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


def resolve_loss(choice: str, base: nn.Module, *, writes_text: bool, fsdp: bool) -> str:
    """``"chunked"`` or ``"plain"`` for ``choice`` (auto, chunked, plain) on this model and task."""
    if choice == "plain":
        return "plain"
    if not writes_text:
        problem: str | None = "the task is scored by a classification head, whose loss has no vocabulary to chunk"
    elif fsdp:
        problem = "FSDP shards the output head the chunked loss reads"
    else:
        problem = chunked_loss_problem(base)
    if problem is None:
        return "chunked"
    if choice == "chunked":
        raise ArgumentError(f"--loss chunked: {problem}; use --loss plain or --loss auto")
    return "plain"


def loss_function(kind: str, base: nn.Module) -> LossFunction:
    """``f(model, batch)``: the loss of ``batch`` run through ``model`` (``base``, or a wrapper around it)."""
    if kind == "chunked":
        return lambda model, batch: lm_loss(base, batch, forward=model)
    return lambda model, batch: model(**batch).loss
