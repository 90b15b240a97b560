"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv 2402.09353).

The adapted weight is split into a magnitude and a direction, and LoRA updates the direction:

    W' = m * (W + s B A) / ||W + s B A||_c        y = W' x + b

``||.||_c`` is the norm of each output unit's weight row (the paper's column norm of ``W`` stored as
``in x out``); ``m`` (one per output unit) starts at ``||W||_c`` and ``B = 0``, so the model starts equal
to the base. As in the paper (Sec. 4.3) the norm is treated as a constant in backward, which saves the
memory of its graph without changing the forward. With dropout the update sees ``dropout(x)``:
``y = (m / ||W + s B A||_c) (W x + s B A dropout(x)) + b``.

Mergeable: ``W <- W'``; unmerge divides the magnitude back out with the norm kept from the merge.
Over a bitsandbytes 4-bit (or 8-bit) base, QDoRA, the same layer reads the dequantized weight through
``core.quantized.base_weight`` and merging swaps in the dequantized float base, as QLoRA does; apply ``dora`` to
a model loaded or quantized in 4 bits (``load_quantized`` / ``quantize_model``), or ``qdora`` to quantize and
adapt in one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import require
from peftlab.core.layers import weight_out_in
from peftlab.core.quantized import base_weight, dequantize_base, restore_quantized_base
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear
from peftlab.methods.reparameterized.lora import inject as inject_lora
from peftlab.methods.reparameterized._lora_init import RESIDUAL_INITS


@dataclass(frozen=True, kw_only=True)
class DoRAConfig(LoRAConfig):
    method = "dora"

    def validate(self) -> None:
        super().validate()
        require(self.init not in RESIDUAL_INITS, self, "init",
                "DoRA starts from a random direction update; use 'kaiming' or 'gaussian'")
        require(not self.target_parameters, self, "target_parameters",
                "DoRA normalises a linear layer's weight; adapt parameters with 'lora'")


class DoRALinear(LoRALinear):
    """``y = (m / ||W + s B A||_c) (W x + s B A dropout(x)) + b``, in the factors' dtype over any base (a
    quantized base's compute dtype does not apply: QLoRA's low-precision LoRA path would leave out ``m``)."""

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, dropout: float, init: str = "kaiming") -> None:
        super().__init__(base_layer, rank, scaling, dropout, init)
        with torch.no_grad():
            norm = base_weight(base_layer, self.lora_A.dtype).norm(dim=1)
        self.lora_magnitude = nn.Parameter(norm.clone())
        self._merged_norm: torch.Tensor | None = None

    def _direction_norm(self) -> torch.Tensor:
        weight = base_weight(self.base_layer, self.lora_A.dtype)
        return (weight + self.scaling * (self.lora_B @ self.lora_A)).norm(dim=1)

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        scale = self.lora_magnitude / self._direction_norm().detach()  # (out,)
        bias = self.bias
        linear = base_output if bias is None else base_output - bias
        update = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scaling
        return base_output + ((scale - 1) * linear + scale * update).to(base_output.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        dequantize_base(self, self.lora_A.dtype)  # a quantized base: merged into its dequantized float copy
        weight = weight_out_in(self.base_layer)
        combined = weight.to(self.lora_A.dtype) + self.scaling * (self.lora_B @ self.lora_A)
        self._merged_norm = combined.norm(dim=1)
        weight.copy_((combined * (self.lora_magnitude / self._merged_norm)[:, None]).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        if not restore_quantized_base(self):  # a quantized base comes back as it was; a float one is unmerged
            weight = weight_out_in(self.base_layer)
            combined = weight.to(self.lora_A.dtype) * (self._merged_norm / self.lora_magnitude)[:, None]
            weight.copy_((combined - self.scaling * (self.lora_B @ self.lora_A)).to(weight.dtype))
        self._merged_norm = None
        self.merged = False


def inject(model: nn.Module, config: LoRAConfig) -> Injection:
    return inject_lora(model, config, layer_class=DoRALinear)


register(MethodSpec(
    name="dora",
    family="reparameterized",
    config_class=DoRAConfig,
    inject=inject,
    paper="Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation (arXiv 2402.09353)",
    summary="LoRA on the direction of each weight row, with a trainable magnitude per output unit.",
    mergeable=True,
))
