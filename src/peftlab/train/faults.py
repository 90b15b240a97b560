"""Training faults a user can act on: a loss that is no longer a number, and running out of memory.

A training loop calls :func:`check_finite_loss` after each forward pass and wraps a step with
:func:`is_out_of_memory` / :func:`out_of_memory_message`; both turn the fault into a :class:`UserError`
whose message says what happened and what to change, so the CLI prints one line and exits 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from peftlab.core.errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""


class OutOfMemoryError(UserError, MemoryError):
    """A step needed more memory than the device has; the message lists what reduces it."""


def check_finite_loss(
    loss: torch.Tensor | float,
    step: int,
    *,
    last_checkpoint: str | os.PathLike | None = None,
    learning_rate: float | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` is NaN or infinite.

    Call it before ``backward`` (so the bad step never reaches the weights) and do not save a
    checkpoint after it raises: the last one written is the last good one, and the message names it.
    """
    value = loss.detach().float().item() if isinstance(loss, torch.Tensor) else float(loss)
    if math.isfinite(value):
        return
    kept = (
        f"the last good checkpoint is {os.fspath(last_checkpoint)}; resume from it"
        if last_checkpoint is not None
        else "no checkpoint was written yet"
    )
    rate = f" (now {learning_rate:g})" if learning_rate is not None else ""
    raise NonFiniteLossError(
        f"the loss became {value} at step {step}; training stopped and {kept}. "
        f"Lower the learning rate{rate}, clip gradients (max_grad_norm), or train in float32/bfloat16 "
        f"instead of float16"
    )


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA/MPS/CPU allocation failure, however the backend spells it."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)) and not isinstance(error, OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text
    )


REDUCERS: tuple[tuple[str, str], ...] = (
    ("batch_size", "a smaller batch_size with gradient_accumulation_steps raised to keep the effective batch"),
    ("max_length", "a shorter max_length (memory grows with sequence length)"),
    ("gradient_checkpointing", "gradient_checkpointing=true (recomputes activations instead of storing them)"),
    ("precision", "bf16 or fp16 mixed precision"),
    ("method", "a lighter method or rank (e.g. lora with a lower rank) or qlora (a 4-bit base)"),
)


def out_of_memory_message(error: BaseException | None = None, settings: Mapping[str, Any] | None = None) -> str:
    """What ran out, the run's memory-relevant settings, and the options that reduce memory."""
    settings = dict(settings or {})
    where = "the GPU" if error is not None and "cuda" in str(error).lower() else "the device"
    current = ", ".join(f"{key}={value}" for key, value in settings.items())
    options = "; ".join(text for key, text in REDUCERS if not (key == "gradient_checkpointing" and settings.get(key)))
    return f"out of memory on {where}" + (f" with {current}" if current else "") + f". Try: {options}"


def raise_out_of_memory(error: BaseException, settings: Mapping[str, Any] | None = None) -> None:
    """Re-raise an allocation failure as :class:`OutOfMemoryError` (freeing cached blocks first);
    other errors propagate unchanged. Use as ``except Exception as e: raise_out_of_memory(e, settings)``."""
    if not is_out_of_memory(error):
        raise error
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise OutOfMemoryError(out_of_memory_message(error, settings)) from error
