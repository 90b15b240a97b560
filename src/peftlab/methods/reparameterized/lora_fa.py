"""LoRA-FA: LoRA with ``A`` frozen at its random initialisation (Zhang et al. 2023, arXiv 2308.03303).

``y = W x + s * B A x`` with only ``B`` trained. Since ``A`` needs no gradient, backward needs the
``r``-dimensional ``A x`` instead of the full input ``x``: that is the activation memory saving. ``A`` is a
frozen buffer saved with the adapter (it is random, so a load needs it). Mergeable like LoRA.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import require
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear
from peftlab.methods.reparameterized.lora import inject as inject_lora
from peftlab.methods.reparameterized._lora_init import RESIDUAL_INITS


@dataclass(frozen=True, kw_only=True)
class LoRAFAConfig(LoRAConfig):
    method = "lora_fa"

    def validate(self) -> None:
        super().validate()
        require(self.init not in RESIDUAL_INITS, self, "init",
                "LoRA-FA freezes a random A; use 'kaiming' or 'gaussian'")
        require(not self.target_parameters, self, "target_parameters",
                "LoRA-FA's frozen A lives in its linear layers; adapt parameters with 'lora'")


class LoRAFALinear(LoRALinear):
    """``y = base(x) + s * B A dropout(x)`` with ``A`` a frozen buffer."""

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, dropout: float, init: str = "kaiming") -> None:
        super().__init__(base_layer, rank, scaling, dropout, init)
        frozen = self._parameters.pop("lora_A").detach()
        self.register_buffer("lora_A", frozen)

    def adapter_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield "lora_A", self.lora_A


def inject(model: nn.Module, config: LoRAConfig) -> Injection:
    return inject_lora(model, config, layer_class=LoRAFALinear)


register(MethodSpec(
    name="lora_fa",
    family="reparameterized",
    config_class=LoRAFAConfig,
    inject=inject,
    paper="Zhang et al. 2023, LoRA-FA: Memory-efficient Low-rank Adaptation (arXiv 2308.03303)",
    summary="LoRA with A frozen at its random init; only B trains, so backward keeps A x, not x.",
    mergeable=True,
))
