"""A few optimizer steps on one fixed batch, for the hybrid and unified method tests."""

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
