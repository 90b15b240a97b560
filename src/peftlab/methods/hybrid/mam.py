"""MAM adapter, "Mix-And-Match" (He et al. 2022, "Towards a Unified View of Parameter-Efficient
Transfer Learning", arXiv 2110.04366, Sec. 4.6).

Prefix-tuning on every attention layer plus a scaled parallel adapter beside every feed-forward block:

    head_h = softmax(q_h [P_k; K_h]^T / √d) [P_v; V_h]          (prefix_tuning, length 30 in the paper)
    y = FFN(x) + s * W_up ReLU(W_down x)                        (parallel_adapter, m = 512, s = 4)

Composed from the two registered methods' configs and ``inject`` functions; no layer code of its own.
The trainable count is prefix-tuning's (the folded prefix) plus the adapters'.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.core.config import MethodConfig, option
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.additive import prefix_tuning
from peftlab.methods.additive.parallel_adapter import ParallelAdapterConfig
from peftlab.methods.additive.prefix_tuning import PrefixTuningConfig
from peftlab.methods.shared.compose import combine, inject_parts, require_parts_save_nothing


@dataclass(frozen=True, kw_only=True)
class MAMConfig(MethodConfig):
    method = "mam"

    prefix: PrefixTuningConfig = option(
        PrefixTuningConfig(num_virtual_tokens=30),
        "prefix_tuning options for the attention part, as a dict; keys left out keep MAM's defaults (30 tokens).",
    )
    adapter: ParallelAdapterConfig = option(
        ParallelAdapterConfig(bottleneck_size=512, scaling=4.0, blocks=("feed_forward",)),
        "parallel_adapter options for the feed-forward part, as a dict; keys left out keep MAM's defaults "
        "(m = 512, s = 4).",
    )

    def validate(self) -> None:
        require_parts_save_nothing(self, ("prefix", "adapter"))


def inject(model: nn.Module, config: MAMConfig) -> Injection:
    return combine(inject_parts(model, [config.prefix, config.adapter]), prefix_tuning.count_trainable)


register(MethodSpec(
    name="mam",
    family="hybrid",
    config_class=MAMConfig,
    inject=inject,
    paper="He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv 2110.04366)",
    summary="Prefix-tuning on attention plus a scaled parallel adapter on the feed-forward (composed).",
    hooks=MethodHooks(export_state=prefix_tuning.export_state, import_state=prefix_tuning.import_state),
))
