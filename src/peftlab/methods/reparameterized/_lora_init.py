"""How a LoRA update ``s * B A`` starts: one small strategy per initialisation (LoRA's ``init`` option).

* ``kaiming``: ``A`` Kaiming-uniform, ``B = 0`` (the reference loralib/peft default).
* ``gaussian``: ``A ~ N(0, 1/r^2)``, ``B = 0`` (Hu et al. 2022, arXiv 2106.09685, Sec. 4.1).
* ``pissa``: Meng et al. 2024, arXiv 2404.02948. With ``W = U S V^T``, ``B = U_r sqrt(S_r / s)`` and
  ``A = sqrt(S_r / s) V_r^T`` (the principal part); the frozen base keeps the residual ``W - s B A``.
* ``olora``: Büyükakyüz 2024, arXiv 2406.01775. With ``W = Q R``, ``B = Q_r`` and ``A = R_r``
  (the first ``r`` columns of ``Q`` and rows of ``R``); the base keeps ``W - s B A``.

A strategy is called with the layer's fresh ``A`` (``B`` is zero), its frozen base layer and its scale. The
two residual strategies return the initial factors ``(A0, B0)`` instead of writing them: the layer
(``LoRALinear`` in ``lora.py``) starts from them, takes ``s B0 A0`` out of the frozen weight, so the model
starts equal to the base, and keeps them as adapter buffers (saved with the adapter): they are what converts
the adapter to a plain LoRA update on the *untouched* base, ``s (B A - B0 A0)`` (rank ``2r``:
``[B, -B0] [A; A0]``), and what a load refits the residual with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import weight_out_in

Factors = tuple[torch.Tensor, torch.Tensor]  # (A0, B0): (r x in), (out x r)
InitStrategy = Callable[[nn.Parameter, nn.Module, float], Factors | None]


class InitError(UserError, ValueError):
    pass


def kaiming(lora_a: nn.Parameter, base_layer: nn.Module, scaling: float) -> None:
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))


def gaussian(lora_a: nn.Parameter, base_layer: nn.Module, scaling: float) -> None:
    nn.init.normal_(lora_a, std=1.0 / lora_a.shape[0])


def _frozen_weight(base_layer: nn.Module, rank: int) -> torch.Tensor:
    """The base weight as an ``(out, in)`` tensor, refused where a residual init cannot be taken from it."""
    weight = weight_out_in(base_layer)
    if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point():
        raise InitError(
            f"a residual LoRA init needs a float base weight, not {type(weight).__name__}/{weight.dtype}; "
            f"initialise on the unquantized model, then quantize the residual"
        )
    if rank > min(weight.shape):
        raise InitError(f"rank {rank} exceeds the smaller side of a {tuple(weight.shape)} weight; lower `rank`")
    return weight


def principal_factors(matrix: torch.Tensor, rank: int, scaling: float) -> Factors:
    """``(A0, B0)`` (float64) with ``s B0 A0`` the best rank-``r`` approximation of ``matrix`` (Eckart-Young),
    split evenly between the factors: ``B0 = U_r sqrt(S_r / s)``, ``A0 = sqrt(S_r / s) V_r^T``."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = torch.sqrt(s[:rank] / scaling)
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


@torch.no_grad()
def pissa(lora_a: nn.Parameter, base_layer: nn.Module, scaling: float) -> Factors:
    rank = lora_a.shape[0]
    return principal_factors(_frozen_weight(base_layer, rank), rank, scaling)


@torch.no_grad()
def olora(lora_a: nn.Parameter, base_layer: nn.Module, scaling: float) -> Factors:
    rank = lora_a.shape[0]
    q, r = torch.linalg.qr(_frozen_weight(base_layer, rank).double())
    return r[:rank], q[:, :rank]


INIT_STRATEGIES: dict[str, InitStrategy] = {
    "kaiming": kaiming,
    "gaussian": gaussian,
    "pissa": pissa,
    "olora": olora,
}
RESIDUAL_INITS = ("pissa", "olora")
