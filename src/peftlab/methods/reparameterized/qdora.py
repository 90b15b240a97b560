"""QDoRA: DoRA over a frozen 4-bit base, quantized and adapted in one step (DoRA: Liu et al. 2024,
arXiv 2402.09353, over QLoRA's NF4 base: Dettmers et al. 2023, arXiv 2305.14314).

``W' = m * (deq(W_NF4) + s B A) / ||deq(W_NF4) + s B A||_c``: DoRA's own layer (``dora.py``), which reads
the base through ``core.quantized.base_weight``, over the base ``core.quantized`` stores with ``qlora.py``'s
options. Merging gives a dequantized float model; unmerge restores the quantized layers bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.core.config import require
from peftlab.core.quantized import quantize_model
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized.dora import DoRALinear
from peftlab.methods.reparameterized.qlora import QLoRAConfig, make_optimizer


@dataclass(frozen=True, kw_only=True)
class QDoRAConfig(QLoRAConfig):
    method = "qdora"

    def validate(self) -> None:
        super().validate()
        require(self.init != "loftq", self, "init", "LoftQ fits a LoRA product to the quantisation error; QDoRA "
                "starts as DoRA does: use 'kaiming' or 'gaussian' (or qlora for LoftQ)")


def inject(model: nn.Module, config: QDoRAConfig) -> Injection:
    quantize_model(model, config)
    for name, module in find_modules(model, config.target_modules):
        replace_module(model, name, DoRALinear(module, config.rank, config.alpha / config.rank, config.dropout,
                                                   config.init))
    return Injection()


register(MethodSpec(
    name="qdora",
    family="reparameterized",
    config_class=QDoRAConfig,
    inject=inject,
    paper="Liu et al. 2024, DoRA (arXiv 2402.09353), over the 4-bit NF4 base of QLoRA (arXiv 2305.14314)",
    summary="DoRA over a frozen 4-bit NF4 base with double quantisation.",
    mergeable=True,
    hooks=MethodHooks(optimizer=make_optimizer),
))
