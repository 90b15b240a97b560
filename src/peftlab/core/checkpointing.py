"""Activation checkpointing for an adapted model: store layer inputs, recompute the rest in backward.

A frozen base makes checkpointing easy to get wrong: with reentrant checkpointing no input of a
layer needs a gradient, and the layer's backward (the adapters' gradients with it) is skipped.
peftlab marks the embedding output while checkpointing is on (see ``core.injection``); this function
turns checkpointing on through ``transformers`` with the non-reentrant default, which needs no mark.
It costs about one extra forward per step and saves most of the stored activations.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from torch import nn

from peftlab.core.errors import UserError

ContextFn = Callable[[], tuple[AbstractContextManager, AbstractContextManager]]  # torch.utils.checkpoint's context_fn


class CheckpointingError(UserError, ValueError):
    pass


def enable_activation_checkpointing(model: nn.Module, *, reentrant: bool = False, every_n_layers: int = 1,
                                    context_fn: ContextFn | None = None) -> None:
    """Checkpoint every ``every_n_layers``-th transformer layer (1: all) while the model is in train mode.

    Non-reentrant, a recomputed layer draws the dropout masks its forward drew. ``context_fn`` (non-reentrant
    only) wraps the forward and its recomputation: a training loop that draws masks its own way passes its
    contexts here (``peftlab.train.speedups.fast_dropout.checkpoint_contexts``); leave it out when the blocks
    will be compiled, as the compiler draws their masks itself and accepts no other recompute context."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise CheckpointingError(
            f"{type(model).__name__} does not support activation checkpointing; train it without"
        )
    if every_n_layers < 1:
        raise CheckpointingError(f"every_n_layers must be at least 1, got {every_n_layers}")
    kwargs: dict = {"use_reentrant": reentrant}
    if context_fn is not None:
        if reentrant:
            raise CheckpointingError("context_fn needs non-reentrant checkpointing (reentrant=False)")
        kwargs["context_fn"] = context_fn
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers)
    elif every_n_layers == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise CheckpointingError("every_n_layers needs a transformers version with activation_checkpointing_enable")


def checkpointing_enabled(model: nn.Module) -> bool:
    """Whether transformers' activation checkpointing is on for ``model`` (the flag's name, by version)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))


def disable_activation_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
