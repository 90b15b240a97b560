"""Tensors and modules that FSDP2 (``torch.distributed.fsdp.fully_shard``) shards.

Outside a unit's forward each of its parameters, and each gradient, is a ``DTensor``: this rank holds one
slice of it. Work done beside the forward (a method's per-step hooks, saving) either gathers the whole tensor
or works on the local slice with the matching slice of anything whole it combines with. Every helper here
leaves a tensor or module that is not sharded as it is, so the same code runs in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on this rank: a shard is gathered (a collective, differentiable); else the tensor."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The slice this rank holds (same storage, so in-place edits reach the parameter); else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_slice(whole_tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The slice of a whole tensor (the same on every rank) that lines up with this rank's slice of ``like``."""
    if not isinstance(like, DTensor):
        return whole_tensor
    return distribute_tensor(whole_tensor, like.device_mesh, like.placements, src_data_rank=None).to_local()


def units(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 units inside ``model``, outermost first (none for a model that is not sharded)."""
    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextlib.contextmanager
def unsharded(sharded_units: Sequence[nn.Module]) -> Iterator[None]:
    """The units' parameters gathered whole for the duration, then released (a collective for full units)."""
    for unit in sharded_units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in sharded_units:
            unit.reshard()
