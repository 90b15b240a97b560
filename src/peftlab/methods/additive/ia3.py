"""(IA)³: learned vectors that rescale keys, values and the feed-forward activations
(Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", arXiv 2205.05638).

Keys and values: ``y = l ⊙ (W x + b)``. Feed-forward down-projection: ``y = W (l ⊙ x) + b``.
Every ``l`` starts at one, so the model starts equal to the base. Mergeable: ``W <- diag(l) W``
(and ``b <- l ⊙ b``) for output scaling, ``W <- W diag(l)`` for input scaling.
On GPT-2, keys and values share a fused projection with the queries; the whole output is scaled.

Input scaling in training folds ``l`` into the weight, ``y = (W diag(l)) x + b``, with the backward
written out (:class:`_InputScaledLinear`): ``g = dy W``, ``dx = l ⊙ g``, ``dl = sum_tokens(x ⊙ g)``.
The forward scales the ``(out, in)`` weight instead of the ``(tokens, in)`` activations (used where the
batch has at least ``out`` tokens) and writes no scaled copy of them; backward keeps ``x``, as the
written-out product does. Inside a compiled block the compiler fuses ``l ⊙ x`` into the op before it,
so there the forward stays as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option
from peftlab.core.layers import AdapterLayer, innermost, tensor_options, weight_out_in
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
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


class _InputScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, scale, weight)
        return F.linear(x, weight * scale, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, scale, weight = ctx.saved_tensors
        grad_scaled_input = grad.matmul(weight)
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = (grad_scaled_input * x).reshape(-1, scale.shape[0]).sum(0)
        grad_x = grad_scaled_input.mul_(scale) if ctx.needs_input_grad[0] else None
        return grad_x, grad_scale, None, None


def _folds_into_weight(layer: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether :class:`_InputScaledLinear` computes what calling ``layer`` on ``l ⊙ x`` would (to float
    rounding): a plain frozen ``nn.Linear`` with no hooks, everything in one dtype, no autocast (it would run
    the forward's product in another dtype than the backward's) and no compiler tracing it; and whether it is cheaper: the weight is no larger than the activations (training batches, not
    one-token decoding)."""
    return (type(layer) is nn.Linear and not layer.weight.requires_grad
            and (layer.bias is None or not layer.bias.requires_grad)
            and not layer._forward_hooks and not layer._forward_pre_hooks
            and x.dtype == scale.dtype == layer.weight.dtype and x.numel() >= layer.weight.numel()
            and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling())


class IA3Linear(AdapterLayer):
    """``y = l ⊙ base(x)`` (output scaling) or ``y = base(l ⊙ x)`` (input scaling)."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, scale_input: bool) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        size = self.in_features if scale_input else self.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, **tensor_options(weight)))
        self.scale_input = scale_input

    def adapted_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        if self.scale_input:
            if not args and not kwargs and _folds_into_weight(self.base_layer, x, self.ia3_l):
                return _InputScaledLinear.apply(x, self.ia3_l, self.base_layer.weight, self.base_layer.bias)
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
