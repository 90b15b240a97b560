"""Training memory split into weights, gradients, optimizer state and activations, measured on one step.

Measured: the bytes of the model's parameter and buffer storages (weights); of the ``.grad`` tensors
after a backward pass (gradients); of the optimizer's state after one step (optimizer); and of the
tensors autograd saves for backward during the forward pass, parameters excluded (activations).
Predicted (the accounting rule behind the survey's memory discussion): weights = parameters x bytes
each, gradients = trainable x 4, AdamW state = 2 x trainable x 4. Methods whose measured gradients
exceed the prediction (Child-Tuning computes full gradients) show it beside each other.

Peak memory is separate: CUDA max allocated on GPU, the process's peak RSS on CPU.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftlab.core.accounting import parameter_report

COMPONENTS = ("weights", "gradients", "optimizer", "activations")
FP32_BYTES = 4


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def _unique_bytes(tensors: list[torch.Tensor], exclude: set[tuple[str, int]] = frozenset()) -> int:
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        key = _storage_key(tensor)
        if key not in exclude:
            seen[key] = max(seen.get(key, 0), tensor.untyped_storage().nbytes())
    return sum(seen.values())


def measure_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    loss_of: Callable[[Any], torch.Tensor] = lambda output: output.loss,
) -> dict[str, int]:
    """Bytes of each component on one training step of ``model`` on ``batch`` (the step updates the model)."""
    tensors = [*model.parameters(), *model.buffers()]
    weights = _unique_bytes(tensors)
    parameter_storages = {_storage_key(t) for t in tensors}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    model.train()
    optimizer = make_optimizer(model)
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of(model(**batch))
    activations = _unique_bytes(saved, exclude=parameter_storages)
    saved.clear()
    loss.backward()
    gradients = _unique_bytes([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    state = [value for per_parameter in optimizer.state.values() for value in per_parameter.values()
             if isinstance(value, torch.Tensor) and value.numel() > 1]
    optimizer_bytes = _unique_bytes(state)
    optimizer.zero_grad(set_to_none=True)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer_bytes, "activations": activations}


def predicted(model: nn.Module) -> dict[str, int | None]:
    """The parameter-count prediction of each component (activations are not predicted)."""
    report = parameter_report(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"weights": weights, "gradients": report.trainable * FP32_BYTES,
            "optimizer": 2 * report.trainable * FP32_BYTES, "activations": None}


def breakdown(measured: dict[str, int], prediction: dict[str, int | None]) -> dict[str, dict[str, int | None]]:
    return {name: {"measured": measured[name], "predicted": prediction[name]} for name in COMPONENTS}


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss
