"""Shared by the hybrid, unified and parallel-adapter tests: perturbing an adapter, a few training steps."""

from __future__ import annotations

import torch
from torch import nn

import peftlab
from conftest import batch_for


def losses_while_training(model: nn.Module, steps: int = 6, lr: float = 1e-2) -> list[float]:
    """The loss before each of ``steps`` AdamW steps over the method's parameter groups."""
    optimizer = torch.optim.AdamW(peftlab.parameter_groups(model, lr=lr))
    batch = batch_for(model)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


def perturb(model: nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    """Move every trainable parameter off its initial value (zero up-projections, zero LoRA B, ...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))
