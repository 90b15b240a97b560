"""(IA)³: learned vectors that rescale keys, values and the feed-forward activations
(Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv 2205.05638).

Keys and values: ``y = l ⊙ (W x + b)``. Feed-forward down-projection: ``y = W (l ⊙ x) + b``.
Every ``l`` starts at one, so the model starts equal to the base. Mergeable: ``W <- diag(l) W``
(and ``b <- l ⊙ b``) for output scaling, ``W <- W diag(l)`` for input scaling.
On GPT-2, keys and values share a fused projection with the queries; the whole output is scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option
from peftlab.core.injection import Injection
from peftlab.core.layers import AdapterLayer, innermost, weight_out_in
from peftlab.core.registry import MethodSpec, register
from peftlab.core.targeting import find_modules, replace_module


@dataclass(frozen=True, kw_only=True)
class IA3Config(MethodConfig):
    method = "ia3"

    target_modules: tuple[str, ...] = option(
        ("attention_kv", "feed_forward_output"), "Layers whose outputs (or inputs, see below) are rescaled."
    )
    feedforward_modules: tuple[str, ...] = option(
        ("feed_forward_output",), "Subset of the targets rescaled on their input (the feed-forward activations)."
    )


class IA3Linear(AdapterLayer):
    """``y = l ⊙ base(x)`` (output scaling) or ``y = base(l ⊙ x)`` (input scaling)."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, scale_input: bool) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        size = self.in_features if scale_input else self.out_features
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.ia3_l = nn.Parameter(torch.ones(size, dtype=dtype, device=weight.device))
        self.scale_input = scale_input

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        if self.scale_input:
            return self.base_layer(x * self.ia3_l.to(x.dtype), *args, **kwargs)
        output = self.base_layer(x, *args, **kwargs)
        return output * self.ia3_l.to(output.dtype)

    @torch.no_grad()
    def _rescale(self, factor: torch.Tensor) -> None:
        weight = weight_out_in(self.base_layer)  # a view of the stored weight
        if self.scale_input:
            weight.mul_(factor.to(weight.dtype)[None, :])
            return
        weight.mul_(factor.to(weight.dtype)[:, None])
        bias = getattr(innermost(self.base_layer), "bias", None)
        if bias is not None:
            bias.mul_(factor.to(bias.dtype))

    def merge(self) -> None:
        if not self.merged:
            self._rescale(self.ia3_l)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._rescale(1.0 / self.ia3_l)
            self.merged = False


def inject(model: nn.Module, config: IA3Config) -> Injection:
    input_scaled = {name for name, _ in find_modules(model, config.feedforward_modules)}
    for name, module in find_modules(model, config.target_modules):
        replace_module(model, name, IA3Linear(module, scale_input=name in input_scaled))
    return Injection()


register(MethodSpec(
    name="ia3",
    family="additive",
    config_class=IA3Config,
    inject=inject,
    paper="Liu et al. 2022, (IA)³: Few-Shot PEFT is Better and Cheaper than In-Context Learning (arXiv 2205.05638)",
    summary="Learned vectors rescale keys, values and feed-forward activations.",
    mergeable=True,
))
