"""LoRA+: LoRA with a larger learning rate for ``B`` than for ``A`` (Hayou et al. 2024, arXiv 2402.12354).

The model is plain LoRA, ``y = W x + s * B A x``; only the optimizer differs: ``lr_B = ratio * lr_A``
(the paper recommends a ratio around 16 for Adam). The rule reaches any training loop through
``peftlab.parameter_groups(model, lr)``: one group for ``A`` (and anything else trained) at ``lr``, one
for ``B`` at ``ratio * lr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from peftlab.core.config import option, require
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import adapter_parameters
from peftlab.methods.reparameterized._lora_parameters import LoRAParameter
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear, import_state, inject


@dataclass(frozen=True, kw_only=True)
class LoRAPlusConfig(LoRAConfig):
    method = "lora_plus"

    lr_ratio: float = option(16.0, "Learning rate of B divided by that of A (the paper's lambda).")

    def validate(self) -> None:
        super().validate()
        require(self.lr_ratio > 0, self, "lr_ratio", "must be positive")


def parameter_groups(model: nn.Module, config: LoRAPlusConfig, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    b_matrices = {id(m.lora_B) for m in model.modules() if isinstance(m, (LoRALinear, LoRAParameter))}
    trained = [p for _, p in adapter_parameters(model)]
    return [
        {"name": "lora_A", "params": [p for p in trained if id(p) not in b_matrices],
         "lr": lr, "weight_decay": weight_decay},
        {"name": "lora_B", "params": [p for p in trained if id(p) in b_matrices],
         "lr": lr * config.lr_ratio, "weight_decay": weight_decay},
    ]


register(MethodSpec(
    name="lora_plus",
    family="reparameterized",
    config_class=LoRAPlusConfig,
    inject=inject,
    paper="Hayou et al. 2024, LoRA+: Efficient Low Rank Adaptation of Large Models (arXiv 2402.12354)",
    summary="LoRA trained with a larger learning rate for B than for A.",
    mergeable=True,
    hooks=MethodHooks(parameter_groups=parameter_groups, import_state=import_state),
))
