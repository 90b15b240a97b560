"""BitFit: train only the bias terms (Ben Zaken et al. 2022, arXiv 2106.10199).

``y = W x + b`` with ``W`` frozen and ``b`` trained. BitFit selects parameters; it adds no module.
Models without biases (LLaMA, T5) get zero-initialised biases on the target linear layers, so the
model's outputs are unchanged at initialisation and the method still has something to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import ConfigError, MethodConfig, option
from peftlab.core.layers import linear_shape
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules


@dataclass(frozen=True, kw_only=True)
class BitFitConfig(MethodConfig):
    method = "bitfit"

    add_missing_biases: bool = option(
        True, "Give bias-free target linear layers (LLaMA, T5) a zero bias to train; false trains existing biases only."
    )
    target_modules: tuple[str, ...] = option(
        ("all_linear",), "Where missing biases are added: preset names or module name patterns."
    )


def inject(model: nn.Module, config: BitFitConfig) -> Injection:
    created: list[str] = []
    if config.add_missing_biases:
        for name, module in find_modules(model, config.target_modules):
            if getattr(module, "bias", None) is None:
                _, out_features = linear_shape(module)
                weight = module.weight
                module.bias = nn.Parameter(torch.zeros(out_features, dtype=weight.dtype, device=weight.device))
                created.append(f"{name}.bias")
    selected = [
        f"{module_name}.bias"
        for module_name, module in model.named_modules()
        if isinstance(module._parameters.get("bias"), nn.Parameter) and f"{module_name}.bias" not in created
    ]
    if not selected and not created:
        raise ConfigError(
            "BitFit found no bias to train: this model has none. Set add_missing_biases=true to add zero biases."
        )
    return Injection(selected=selected, created=created)


register(MethodSpec(
    name="bitfit",
    family="partial",
    config_class=BitFitConfig,
    inject=inject,
    paper="Ben Zaken et al. 2022, BitFit (arXiv 2106.10199)",
    summary="Only bias terms train.",
    mergeable=True,
))
