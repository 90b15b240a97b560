"""LoRA: a trainable low-rank update beside each frozen weight (Hu et al. 2022, arXiv 2106.09685).

``y = W x + (alpha / r) * B A dropout(x)`` with ``A`` (r x in) Kaiming-uniform and ``B`` (out x r)
zero, so the adapted model starts equal to the base. Mergeable: ``W <- W + (alpha / r) B A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.injection import Injection
from peftlab.core.layers import AdapterLayer
from peftlab.core.registry import MethodSpec, register
from peftlab.core.targeting import find_modules, replace_module


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    method = "lora"

    rank: int = option(8, "Rank r of the update B A.")
    alpha: float = option(16.0, "Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = option(0.0, "Dropout on the adapter's input (0 skips the dropout work).")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")
        require(self.alpha > 0, self, "alpha", "must be positive")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(AdapterLayer):
    """``y = base(x) + scaling * B A dropout(x)``."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, dropout: float) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = {"dtype": weight.dtype if weight.is_floating_point() else torch.float32, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(self.lora_A.dtype)
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return base_output + (update * self.scaling).to(base_output.dtype)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


def inject(model: nn.Module, config: LoRAConfig) -> Injection:
    for name, module in find_modules(model, config.target_modules):
        replace_module(model, name, LoRALinear(module, config.rank, config.scaling, config.dropout))
    return Injection()


register(MethodSpec(
    name="lora",
    family="reparameterized",
    config_class=LoRAConfig,
    inject=inject,
    paper="Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models (arXiv 2106.09685)",
    summary="Low-rank update B A beside frozen weights.",
    mergeable=True,
))
