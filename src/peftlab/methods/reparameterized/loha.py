"""LoHa: low-rank Hadamard product update (Hyeon-Woo et al. 2022, FedPara, arXiv 2108.06098; as LyCORIS
applies it to fine-tuning).

    ΔW = (alpha / r) * (W1a W1b) ⊙ (W2a W2b)        y = W x + ΔW x

with ``W1a, W2a`` (out x r) and ``W1b, W2b`` (r x in): rank up to ``r^2`` for ``2r (in + out)``
parameters. ``W1a, W1b, W2a`` start Kaiming-uniform and ``W2b`` at zero, so the model starts equal to the
base. Mergeable: ``W <- W + ΔW``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, tensor_options
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module


@dataclass(frozen=True, kw_only=True)
class LoHaConfig(MethodConfig):
    method = "loha"

    rank: int = option(8, "Rank r of each of the two factors (their Hadamard product has rank up to r^2).")
    alpha: float = option(8.0, "Scale numerator: the update is multiplied by alpha / r.")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(self.alpha > 0, self, "alpha", "must be positive")


class LoHaLinear(AdapterLayer):
    """``y = base(x) + (alpha / r) ((W1a W1b) ⊙ (W2a W2b)) x``."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = tensor_options(weight)
        self.hada_w1_a = nn.Parameter(torch.empty(self.out_features, rank, **factory))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.hada_w2_a = nn.Parameter(torch.empty(self.out_features, rank, **factory))
        self.hada_w2_b = nn.Parameter(torch.zeros(rank, self.in_features, **factory))
        for factor in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
        self.scaling = scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * self.scaling

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight()
        return base_output + F.linear(x.to(delta.dtype), delta).to(base_output.dtype)


def inject_scaled_layers(model: nn.Module, config: LoHaConfig, layer_class: type[AdapterLayer]) -> Injection:
    """Wrap each target in ``layer_class(module, rank, alpha / rank)`` (LoHa's and LoKr's layers)."""
    for name, module in find_modules(model, config.target_modules):
        replace_module(model, name, layer_class(module, config.rank, config.alpha / config.rank))
    return Injection()


def inject(model: nn.Module, config: LoHaConfig) -> Injection:
    return inject_scaled_layers(model, config, LoHaLinear)


register(MethodSpec(
    name="loha",
    family="reparameterized",
    config_class=LoHaConfig,
    inject=inject,
    paper="Hyeon-Woo et al. 2022, FedPara: Low-Rank Hadamard Product for Communication-Efficient "
          "Federated Learning (arXiv 2108.06098)",
    summary="Update is the Hadamard product of two low-rank matrices (rank up to r^2).",
    mergeable=True,
))
