"""How a run spreads over processes and devices: the mixed precision ``auto`` picks, and FSDP2's shard units."""

from __future__ import annotations

import torch
from torch import nn


def mixed_precision(choice: str) -> str:
    """``auto``: bf16 on a GPU that has it, fp16 on other GPUs, off on CPU; anything else as given."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def shard_blocks(model: nn.Module) -> nn.Module:
    """FSDP2: each transformer block its own shard unit, then the rest of the model."""
    from torch.distributed.fsdp import fully_shard

    block_types = tuple(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in block_types:
            fully_shard(module)
    fully_shard(model)
    return model
