"""AdaLoRA's layer: a LoRA update in SVD form, ``P diag(m ⊙ λ) Q``, with a rank mask the budget moves.

``adalora.py`` has the paper, the formulas and the budget allocation that sets the masks; this module holds
the layer and the orthogonality term of its factors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterLayer, tensor_options
from peftlab.methods.reparameterized.lora import add_up_projection


class SVDLinear(AdapterLayer):
    """``y = base(x) + scaling * P diag(mask ⊙ λ) Q dropout(x)``."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, dropout: float) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = tensor_options(weight)
        self.svd_P = nn.Parameter(torch.randn(self.out_features, rank, **factory) * 0.02)
        self.svd_lambda = nn.Parameter(torch.zeros(rank, **factory))
        self.svd_Q = nn.Parameter(torch.randn(rank, self.in_features, **factory) * 0.02)
        self.register_buffer("rank_mask", torch.ones(rank, dtype=torch.bool, device=weight.device))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def adapter_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield "rank_mask", self.rank_mask

    def singular_values(self) -> torch.Tensor:
        return self.svd_lambda * self.rank_mask

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(self.svd_Q.dtype)
        hidden = F.linear(x, self.svd_Q) * (self.singular_values() * self.scaling)  # scaled on the rank side
        return add_up_projection(base_output, hidden, self.svd_P)

    def delta_weight(self) -> torch.Tensor:
        return (self.svd_P * self.singular_values()) @ self.svd_Q * self.scaling

    def orthogonality(self) -> torch.Tensor:
        """``||Pᵀ P - I||²_F + ||Q Qᵀ - I||²_F`` through autograd (the hooks use :class:`StackedOrthogonality`)."""
        eye = torch.eye(self.svd_Q.shape[0], dtype=self.svd_Q.dtype, device=self.svd_Q.device)
        return (self.svd_P.T @ self.svd_P - eye).square().sum() + (self.svd_Q @ self.svd_Q.T - eye).square().sum()


class StackedOrthogonality(torch.autograd.Function):
    """The sum over a group of same-shape layers of ``||Pᵀ P - I||²_F + ||Q Qᵀ - I||²_F``, as one autograd node
    with its gradient written out: ``∂/∂P = 4 P (Pᵀ P - I)``, ``∂/∂Q = 4 (Q Qᵀ - I) Q``. Traced through
    autograd, the same sum records a dozen nodes per group, and their backward costs more than the arithmetic."""

    @staticmethod
    def forward(ctx: Any, *factors: torch.Tensor) -> torch.Tensor:  # P_1 .. P_n, then Q_1 .. Q_n
        layers = len(factors) // 2
        P, Q = torch.stack(factors[:layers]), torch.stack(factors[layers:])  # (n, out, r), (n, r, in)
        eye = torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)
        gram_P, gram_Q = torch.baddbmm(-eye, P.mT, P), torch.baddbmm(-eye, Q, Q.mT)  # Pᵀ P - I, Q Qᵀ - I
        ctx.save_for_backward(P, Q, gram_P, gram_Q)
        return gram_P.square().sum() + gram_Q.square().sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        P, Q, gram_P, gram_Q = ctx.saved_tensors
        return (*torch.bmm(P, gram_P).mul_(4 * grad).unbind(0), *torch.bmm(gram_Q, Q).mul_(4 * grad).unbind(0))


def svd_layers(model: nn.Module) -> list[tuple[str, SVDLinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, SVDLinear)]
