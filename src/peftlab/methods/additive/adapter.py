"""Sequential bottleneck adapter (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for
NLP", arXiv 1902.00751; Pfeiffer et al. 2021 placement, arXiv 2005.00247).

After a sublayer's output projection ``h = f(x)``: ``y = h + W_up σ(W_down h + b_down) + b_up``.
Houlsby places one after attention and one after the feed-forward of every layer; Pfeiffer only
after the feed-forward. ``W_up`` and ``b_up`` start at zero, so the model starts equal to the base.
Not mergeable: the nonlinearity cannot be folded into a weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, tensor_options
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "houlsby": ("attention_output", "feed_forward_output"),
    "pfeiffer": ("feed_forward_output",),
}


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(MethodConfig):
    method = "adapter"

    bottleneck_size: int = option(64, "Width m of the bottleneck (hidden -> m -> hidden).")
    placement: Literal["houlsby", "pfeiffer"] = option(
        "houlsby", "houlsby: after attention and after feed-forward; pfeiffer: after feed-forward only."
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = option("relu", "Nonlinearity σ inside the bottleneck.")
    target_modules: tuple[str, ...] = option(
        (), "Override the placement: the output projections to follow with an adapter (presets or patterns)."
    )

    def validate(self) -> None:
        require(self.bottleneck_size > 0, self, "bottleneck_size", "must be a positive integer")
        require(self.placement in PLACEMENTS, self, "placement", f"must be one of {sorted(PLACEMENTS)}")
        require(self.activation in ACTIVATIONS, self, "activation", f"must be one of {sorted(ACTIVATIONS)}")

    @property
    def targets(self) -> tuple[str, ...]:
        return self.target_modules or PLACEMENTS[self.placement]


class Bottleneck(nn.Module):
    """``z -> W_up σ(W_down z + b_down) + b_up``, with ``W_up``, ``b_up`` zero at initialisation."""

    def __init__(self, features: int, bottleneck: int, activation: str, like: torch.Tensor) -> None:
        super().__init__()
        factory = tensor_options(like)
        self.down = nn.Linear(features, bottleneck, **factory)
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, features, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(z.to(self.down.weight.dtype))))


class SequentialAdapter(AdapterLayer):
    """``y = h + bottleneck(h)`` with ``h = base(x)``."""

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str) -> None:
        super().__init__(base_layer)
        self.adapter = Bottleneck(self.out_features, bottleneck, activation, next(base_layer.parameters()))

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        return base_output + self.adapter(base_output).to(base_output.dtype)


def inject(model: nn.Module, config: AdapterConfig) -> Injection:
    for name, module in find_modules(model, config.targets):
        replace_module(model, name, SequentialAdapter(module, config.bottleneck_size, config.activation))
    return Injection()


register(MethodSpec(
    name="adapter",
    family="additive",
    config_class=AdapterConfig,
    inject=inject,
    paper="Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv 1902.00751)",
    summary="Bottleneck MLP after attention and feed-forward outputs (sequential).",
))
