"""LoKr: Kronecker-product update (KronA, Edalati et al. 2022, arXiv 2212.10650; LoKr as in LyCORIS,
Yeh et al. 2024, arXiv 2309.14859).

    ΔW = (alpha / r) * W1 ⊗ W2        y = W x + ΔW x

Each side is split as ``out = l * k`` and ``in = m * n`` with the factor pair nearest the square root;
``W1`` is ``l x m`` (full), ``W2`` is ``k x n``: low-rank ``W2a W2b`` (``k x r``, ``r x n``) when
``r < max(k, n) / 2``, full otherwise (LyCORIS's rule). ``W1`` starts at zero, so the model starts equal
to the base. The forward never builds ``ΔW``: with ``x`` viewed as ``X`` (m x n), ``ΔW x = W1 X W2^T``.
Mergeable: ``W <- W + ΔW``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import option
from peftlab.core.layers import AdapterLayer, tensor_options
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.reparameterized.loha import LoHaConfig, inject_scaled_layers


@dataclass(frozen=True, kw_only=True)
class LoKrConfig(LoHaConfig):
    """LoHa's options (rank, alpha, targets); only the product differs."""

    method = "lokr"

    rank: int = option(8, "Rank r of the second Kronecker factor (used when r < half its larger side).")


def factor_pair(dimension: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == dimension`` and ``a <= b`` as close as possible (``a`` the largest divisor
    not above the square root)."""
    for a in range(math.isqrt(dimension), 0, -1):
        if dimension % a == 0:
            return a, dimension // a
    raise ValueError(f"cannot factor {dimension}")


class LoKrLinear(AdapterLayer):
    """``y = base(x) + (alpha / r) (W1 ⊗ W2) x``."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = tensor_options(weight)
        (l, k), (m, n) = factor_pair(self.out_features), factor_pair(self.in_features)
        self.lokr_w1 = nn.Parameter(torch.zeros(l, m, **factory))
        if rank < max(k, n) / 2:
            self.lokr_w2_a = nn.Parameter(torch.empty(k, rank, **factory))
            self.lokr_w2_b = nn.Parameter(torch.empty(rank, n, **factory))
            factors = [self.lokr_w2_a, self.lokr_w2_b]
        else:
            self.lokr_w2 = nn.Parameter(torch.empty(k, n, **factory))
            factors = [self.lokr_w2]
        for factor in factors:
            nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
        self.scaling = scaling

    def second_factor(self) -> torch.Tensor:
        if "lokr_w2" in self._parameters:
            return self.lokr_w2
        return self.lokr_w2_a @ self.lokr_w2_b

    def delta_weight(self) -> torch.Tensor:
        return torch.kron(self.lokr_w1, self.second_factor()) * self.scaling

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.lokr_w1, self.second_factor()
        blocks = x.to(w1.dtype).reshape(*x.shape[:-1], w1.shape[1], w2.shape[1])  # (..., m, n)
        update = (w1 @ blocks @ w2.T).reshape(*x.shape[:-1], self.out_features)  # (..., l * k)
        return base_output + (update * self.scaling).to(base_output.dtype)


def inject(model: nn.Module, config: LoKrConfig) -> Injection:
    return inject_scaled_layers(model, config, LoKrLinear)


register(MethodSpec(
    name="lokr",
    family="reparameterized",
    config_class=LoKrConfig,
    inject=inject,
    paper="Edalati et al. 2022, KronA: Parameter-Efficient Tuning with Kronecker Adapter (arXiv 2212.10650); "
          "LoKr: Yeh et al. 2024, LyCORIS (arXiv 2309.14859)",
    summary="Update is the Kronecker product of a small full factor and a low-rank factor.",
    mergeable=True,
))
