"""UniPELT: adapter, prefix-tuning and LoRA, each behind a learned gate (Mao et al. 2022, "UniPELT: A
Unified Framework for Parameter-Efficient Language Model Tuning", arXiv 2110.07577).

Each part's contribution is scaled by a gate computed from the hidden states it acts on,
``G = mean_t σ(W_G x_t + b_G)`` (one value in (0, 1) per example, as in the paper's code):

    LoRA (q, v):      y = W x + G_L(x) · (α/r) B A x
    adapter (FFN):    y = h + G_A(h) · W_up σ(W_down h),  h = FFN(x)
    prefix (attn):    head = softmax(q [G_P(x) P_k; K]^T / √d) [G_P(x) P_v; V],  x = the attention input

The parts are the registered ``lora``, ``adapter`` and ``prefix_tuning`` (through its encoder and the
shared prefix-attention plumbing); the gates are the only new code. With every gate saturated at 1 the
model equals the three parts applied together. In decoders the sequence-mean gate sees the whole
sequence, as in the paper (which gates encoders): a position's update depends on later tokens' gate input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from peftlab.core.architectures import architecture_of
from peftlab.core.config import MethodConfig, option
from peftlab.core.injection import Injection
from peftlab.core.layers import AdapterLayer, AdapterModule, linear_shape
from peftlab.core.registry import MethodSpec, register
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.additive import prefix_tuning
from peftlab.methods.additive.adapter import AdapterConfig, SequentialAdapter
from peftlab.methods.additive.parallel_adapter import BLOCKS, BlockInputTap
from peftlab.methods.additive.prefix_attention import (
    PrefixHandle,
    attach_prefixes,
    attention_module_names,
    discover_sites,
)
from peftlab.methods.additive.prefix_tuning import ENCODER_NAME, PrefixEncoder, PrefixTuningConfig
from peftlab.methods.hybrid.compose import (
    DetachModules,
    combine,
    inject_parts,
    require_parts_save_nothing,
)
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear

GATES_NAME = "unipelt_prefix_gates"


@dataclass(frozen=True, kw_only=True)
class UniPELTConfig(MethodConfig):
    method = "unipelt"

    adapter: AdapterConfig = option(
        AdapterConfig(bottleneck_size=48, placement="pfeiffer"),
        "adapter options, as a dict; keys left out keep UniPELT's defaults (m = 48, after the feed-forward).",
    )
    prefix: PrefixTuningConfig = option(
        PrefixTuningConfig(num_virtual_tokens=10),
        "prefix_tuning options, as a dict; keys left out keep UniPELT's defaults (10 tokens).",
    )
    lora: LoRAConfig = option(
        LoRAConfig(rank=8, alpha=16.0, target_modules=("attention_qv",)),
        "lora options, as a dict; keys left out keep UniPELT's defaults (r = 8, alpha = 16 on W_q and W_v).",
    )

    def validate(self) -> None:
        require_parts_save_nothing(self, ("adapter", "prefix", "lora"))


class Gate(nn.Module):
    """``G(x) = mean_t σ(w · x_t + b)``: shape ``(batch, 1, 1)``, in (0, 1)."""

    def __init__(self, features: int, like: torch.Tensor) -> None:
        super().__init__()
        dtype = like.dtype if like.is_floating_point() else torch.float32
        self.linear = nn.Linear(features, 1, dtype=dtype, device=like.device)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)
        self.block_input: torch.Tensor | None = None  # set by a BlockInputTap (prefix gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x.to(self.linear.weight.dtype))).mean(dim=-2, keepdim=True)


class GatedLayer(AdapterLayer):
    """``y = h + G(z) · (inner(x) - h)``, ``h = base(x)``: the wrapped method's change, gated;
    ``z`` is the layer input (LoRA) or its output (adapter)."""

    def __init__(self, inner: AdapterLayer, gate_on: Literal["input", "output"]) -> None:
        super().__init__(inner)
        self.gate_on = gate_on
        like = next(inner.parameters())
        self.gate = Gate(self.in_features if gate_on == "input" else self.out_features, like)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        inner = self.base_layer
        base_output = inner.base_layer(x, *args, **kwargs)
        delta = inner.adapter_forward(x, base_output) - base_output
        gate = self.gate(x if self.gate_on == "input" else base_output)
        return base_output + gate.to(delta.dtype) * delta


class PrefixGates(AdapterModule):
    """One gate per prefixed attention layer; the provider that scales that layer's prefix."""

    def __init__(self, encoder: PrefixEncoder, features: list[int], like: torch.Tensor) -> None:
        super().__init__()
        self.__dict__["encoder"] = encoder  # registered on the model under prefix-tuning's name
        self.gates = nn.ModuleList(Gate(f, like) for f in features)

    def key_values(self, index: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.encoder.key_values(index, query)  # (1, kv_heads, P, head_dim)
        gate = self.gates[index]
        attention_input, gate.block_input = gate.block_input, None
        if attention_input is None:
            raise RuntimeError("unipelt: the prefix gate saw no attention input (its tap did not run)")
        scale = gate(attention_input)[..., None]  # (B, 1, 1, 1)
        return keys * scale.to(keys.dtype), values * scale.to(values.dtype)


def _gate_layers(model: nn.Module, kind: type[AdapterLayer], gate_on: Literal["input", "output"]) -> None:
    for name, module in [(n, m) for n, m in model.named_modules() if type(m) is kind]:
        replace_module(model, name, GatedLayer(module, gate_on))


def _add_gated_prefixes(model: nn.Module, config: PrefixTuningConfig) -> PrefixHandle:
    sites = discover_sites(model, attention_module_names(model, config.cross_attention))
    embeddings = model.get_input_embeddings().weight
    encoder = PrefixEncoder(sites, config, hidden_size=embeddings.shape[1]).to(embeddings.device)
    model.add_module(ENCODER_NAME, encoder)
    entry_pattern = BLOCKS[architecture_of(model).name]["attention"][0]
    entries = find_modules(model, entry_pattern)
    site_entries = [next((n, m) for n, m in entries if n.startswith(site.name + ".")) for site in sites]
    gates = PrefixGates(encoder, [linear_shape(module)[0] for _, module in site_entries], embeddings)
    model.add_module(GATES_NAME, gates)
    for (name, module), gate in zip(site_entries, gates.gates):
        replace_module(model, name, BlockInputTap(module, gate))
    return attach_prefixes(model, sites, gates.key_values)


def inject(model: nn.Module, config: UniPELTConfig) -> Injection:
    parts = inject_parts(model, [config.lora, config.adapter])
    _gate_layers(model, LoRALinear, "input")
    _gate_layers(model, SequentialAdapter, "output")
    handle = _add_gated_prefixes(model, config.prefix)
    injection = combine(parts, prefix_tuning.count_trainable)
    injection.hooks.append(DetachModules(model, handle, (ENCODER_NAME, GATES_NAME)))
    return injection


register(MethodSpec(
    name="unipelt",
    family="hybrid",
    config_class=UniPELTConfig,
    inject=inject,
    paper="Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning "
          "(arXiv 2110.07577)",
    summary="Adapter, prefix-tuning and LoRA together, each scaled by a learned gate in (0, 1).",
    extra={"export_state": prefix_tuning.export_state, "import_state": prefix_tuning.import_state},
))
