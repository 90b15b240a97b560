"""How a LoRA update ``s * B A`` starts: one small strategy per initialisation (LoRA's ``init`` option).

* ``kaiming``: ``A`` Kaiming-uniform, ``B = 0`` (the reference loralib/peft default).
* ``gaussian``: ``A ~ N(0, 1/r^2)``, ``B = 0`` (Hu et al. 2022, arXiv 2106.09685, Sec. 4.1).
* ``pissa``: Meng et al. 2024, arXiv 2404.02948. With ``W = U S V^T``, ``B = U_r sqrt(S_r / s)`` and
  ``A = sqrt(S_r / s) V_r^T`` (the principal part); the frozen base keeps the residual ``W - s B A``.
* ``olora``: Büyükakyüz 2024, arXiv 2406.01775. With ``W = Q R``, ``B = Q_r`` and ``A = R_r``
  (the first ``r`` columns of ``Q`` and rows of ``R``); the base keeps ``W - s B A``.

The two residual strategies change the frozen weight, so the model starts equal to the base. Their
layers also keep the initial factors ``A0, B0`` as adapter buffers (saved with the adapter): they are
what converts the adapter to a plain LoRA update on the *untouched* base, ``s (B A - B0 A0)``
(rank ``2r``: ``[B, -B0] [A; A0]``), and what :func:`refit_residual` uses to check a load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import weight_out_in

if TYPE_CHECKING:
    from peftlab.methods.reparameterized.lora import LoRALinear


class InitError(UserError, ValueError):
    pass


def kaiming(layer: LoRALinear) -> None:
    nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))


def gaussian(layer: LoRALinear) -> None:
    nn.init.normal_(layer.lora_A, std=1.0 / layer.lora_A.shape[0])


def _frozen_weight(layer: LoRALinear) -> torch.Tensor:
    """The base weight as an ``(out, in)`` view that writes through to storage."""
    weight = weight_out_in(layer.base_layer)
    if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point():
        raise InitError(
            f"a residual LoRA init needs a float base weight, not {type(weight).__name__}/{weight.dtype}; "
            f"initialise on the unquantized model, then quantize the residual"
        )
    rank = layer.lora_A.shape[0]
    if rank > min(weight.shape):
        raise InitError(f"rank {rank} exceeds the smaller side of a {tuple(weight.shape)} weight; lower `rank`")
    return weight


@torch.no_grad()
def _keep_residual(layer: LoRALinear, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    layer.lora_A.copy_(a)
    layer.lora_B.copy_(b)
    layer.register_buffer("lora_A_init", layer.lora_A.detach().clone())
    layer.register_buffer("lora_B_init", layer.lora_B.detach().clone())
    weight.sub_((layer.scaling * (layer.lora_B_init @ layer.lora_A_init)).to(weight.dtype))


@torch.no_grad()
def pissa(layer: LoRALinear) -> None:
    weight = _frozen_weight(layer)
    rank = layer.lora_A.shape[0]
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = torch.sqrt(s[:rank] / layer.scaling)
    _keep_residual(layer, weight, root[:, None] * vh[:rank], u[:, :rank] * root[None, :])


@torch.no_grad()
def olora(layer: LoRALinear) -> None:
    weight = _frozen_weight(layer)
    rank = layer.lora_A.shape[0]
    q, r = torch.linalg.qr(weight.double())
    _keep_residual(layer, weight, r[:rank], q[:, :rank])


INIT_STRATEGIES: dict[str, Callable[[LoRALinear], None]] = {
    "kaiming": kaiming,
    "gaussian": gaussian,
    "pissa": pissa,
    "olora": olora,
}
RESIDUAL_INITS = ("pissa", "olora")


@torch.no_grad()
def refit_residual(layer: LoRALinear, a_init: torch.Tensor, b_init: torch.Tensor) -> None:
    """Make the base residual agree with loaded initial factors (a no-op when they equal the recomputed ones,
    which is the case on the untouched base with the same numerics)."""
    if torch.equal(a_init, layer.lora_A_init) and torch.equal(b_init, layer.lora_B_init):
        return
    weight = weight_out_in(layer.base_layer)
    old = layer.lora_B_init @ layer.lora_A_init
    new = b_init.to(old.dtype) @ a_init.to(old.dtype)
    weight.add_((layer.scaling * (old - new)).to(weight.dtype))
    layer.lora_A_init.copy_(a_init)
    layer.lora_B_init.copy_(b_init)
