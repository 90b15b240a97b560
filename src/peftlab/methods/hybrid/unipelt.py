"""UniPELT: adapter, prefix-tuning and LoRA, each behind a learned gate (Mao et al. 2022, "UniPELT: A
Unified Framework for Parameter-Efficient Language Model Tuning", arXiv 2110.07577).

Each part's contribution is scaled by a gate computed from the hidden states it acts on. With
``gate_pooling="token"`` (the default) this is the paper's ``G = σ(W_G x + b_G)`` at every position ``t``:

    LoRA (q, v):      y_t = W x_t + G_L(x_t) · (α/r) B A x_t
    adapter (FFN):    y_t = h_t + G_A(h_t) · W_up σ(W_down h_t),  h = FFN(x)
    prefix (attn):    head_t = softmax(q_t [G_P(x_t) P_k; K]^T / √d) [G_P(x_t) P_v; V],  x = the attention input

A position's update depends on that position alone: causal, the same with and without a KV cache, and
unchanged by padding. ``gate_pooling="sequence"`` follows the authors' released code (and AdapterHub's):
one gate per example, ``G = mean_t σ(W_G x_t + b_G)`` over the positions of the current call, for
encoders; the mean counts padding positions, and in a decoder a position's update depends on later tokens.

The per-query prefix gate runs as one call of the model's attention on widened heads,
``[q_t, G_t q_t] · [0, P_k]^T = G_t q_t · P_k`` and ``[q_t, G_t q_t] · [K, 0]^T = q_t · K`` (values
``[0, P_v]`` and ``[V, 0]``, the two halves of the output added back with ``G_t``), so masks, T5's position
bias, dropout and eager/sdpa stay the model's own; the price is twice the head width in those attention calls.

The parts are the registered ``lora``, ``adapter`` and ``prefix_tuning`` (through its encoder and the
shared prefix-attention plumbing); the gates are the only new code. With every gate saturated at 1 the
model equals the three parts applied together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface

from peftlab.core.architectures import architecture_of
from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, AdapterModule, linear_shape, tensor_options
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.additive import prefix_tuning
from peftlab.methods.additive.adapter import AdapterConfig, SequentialAdapter
from peftlab.methods.additive.parallel_adapter import BLOCKS, BlockInputTap
from peftlab.methods.additive._prefix_encoder import PrefixEncoder
from peftlab.methods.additive.prefix_tuning import ENCODER_NAME, PrefixTuningConfig
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear
from peftlab.methods.shared.compose import (
    DetachModules,
    combine,
    inject_parts,
    require_parts_save_nothing,
)
from peftlab.methods.shared.prefix_attention import (
    PrefixHandle,
    attach_prefixes,
    attention_module_names,
    discover_sites,
    prefix_attention_forward,
)

GATES_NAME = "unipelt_prefix_gates"
TOKEN_GATED_IMPLEMENTATION = "peftlab_unipelt_prefix"
_GATE_SLOT = "peftlab_unipelt_gate"

Pooling = Literal["token", "sequence"]


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
    gate_pooling: Pooling = option(
        "token",
        "'token': one gate per position, G = sigmoid(W_G x_t + b_G), the paper's formula (causal, the same "
        "with or without a KV cache, unchanged by padding); 'sequence': one gate per example, the mean of "
        "sigmoid(W_G x_t + b_G) over the positions, as in the authors' code: for encoders, and it depends "
        "on padding.",
    )

    def validate(self) -> None:
        require_parts_save_nothing(self, ("adapter", "prefix", "lora"))
        require(self.gate_pooling in ("token", "sequence"), self, "gate_pooling", "must be token or sequence")
        require(not self.lora.target_parameters, self, "lora", "UniPELT gates linear LoRA layers; its lora part "
                "takes no target_parameters")


class Gate(nn.Module):
    """``G(x)_t = σ(w · x_t + b)``, shape ``(batch, T, 1)`` (``"token"``), or its mean over ``t``, shape
    ``(batch, 1, 1)`` (``"sequence"``); in (0, 1)."""

    def __init__(self, features: int, like: torch.Tensor, pooling: Pooling = "token") -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1, **tensor_options(like))
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)
        self.pooling = pooling
        self.block_input: torch.Tensor | None = None  # set by a BlockInputTap (prefix gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear(x.to(self.linear.weight.dtype)))
        return gate.mean(dim=-2, keepdim=True) if self.pooling == "sequence" else gate

    def of_block_input(self) -> torch.Tensor:
        """The gate of the attention input its tap recorded; drops the reference to the activations."""
        attention_input, self.block_input = self.block_input, None
        if attention_input is None:
            raise RuntimeError("unipelt: the prefix gate saw no attention input (its tap did not run)")
        return self(attention_input)


class GatedLayer(AdapterLayer):
    """``y = h + G(z) · (inner(x) - h)``, ``h = base(x)``: the wrapped method's change, gated;
    ``z`` is the layer input (LoRA) or its output (adapter)."""

    def __init__(self, inner: AdapterLayer, gate_on: Literal["input", "output"], pooling: Pooling) -> None:
        super().__init__(inner)
        self.gate_on = gate_on
        like = next(inner.parameters())
        self.gate = Gate(self.in_features if gate_on == "input" else self.out_features, like, pooling)

    def adapted_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        inner = self.base_layer
        base_output = inner.base_layer(x, *args, **kwargs)
        delta = inner.adapter_forward(x, base_output) - base_output
        gate = self.gate(x if self.gate_on == "input" else base_output)
        return base_output + gate.to(delta.dtype) * delta


class PrefixGates(AdapterModule):
    """One gate per prefixed attention layer; the provider that scales that layer's prefix.

    ``"sequence"``: the prefix itself is scaled, one gate per example. ``"token"``: the prefix is padded to
    the widened heads of :func:`token_gated_prefix_attention`, which applies the per-query gate.
    """

    def __init__(self, encoder: PrefixEncoder, features: list[int], like: torch.Tensor, pooling: Pooling) -> None:
        super().__init__()
        self.__dict__["encoder"] = encoder  # registered on the model under prefix-tuning's name
        self.gates = nn.ModuleList(Gate(f, like, pooling) for f in features)

    def key_values(self, index: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.encoder.key_values(index, query)  # (1, kv_heads, P, head_dim)
        gate = self.gates[index]
        if gate.pooling == "token":
            return torch.cat([torch.zeros_like(keys), keys], -1), torch.cat([torch.zeros_like(values), values], -1)
        scale = gate.of_block_input()[..., None]  # (B, 1, 1, 1)
        return keys * scale.to(keys.dtype), values * scale.to(values.dtype)


def token_gated_prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """``head_t = softmax(q_t [G_t P_k; K]^T s + [0; M]) [G_t P_v; V]``, ``G_t`` = the gate of query ``t``'s
    attention input, as the prefixed attention over ``[q, G q]``, ``[K, 0]``, ``[V, 0]`` and a provider's
    ``[0, P_k]``, ``[0, P_v]``: ``out = out_V + G_t out_P``."""
    gate = module.__dict__[_GATE_SLOT].of_block_input()  # (B, T, 1)
    per_query = gate.to(query.dtype)[:, None]  # (B, 1, T, 1)
    if kwargs.get("scaling") is None:  # keep the model's default scale of the unwidened heads
        kwargs["scaling"] = query.shape[-1] ** -0.5
    query = torch.cat([query, per_query * query], dim=-1)  # (B, H, T, 2 head_dim)
    key = torch.cat([key, torch.zeros_like(key)], dim=-1)
    value = torch.cat([value, torch.zeros_like(value)], dim=-1)
    output, weights = prefix_attention_forward(module, query, key, value, attention_mask, **kwargs)
    real, prefix = output.chunk(2, dim=-1)  # (B, T, H, head_dim) each
    return real + gate.to(prefix.dtype)[..., None] * prefix, weights


class _TokenGateSlots:
    """Routes each prefixed attention module through :func:`token_gated_prefix_attention` with its gate;
    ``remove`` (``peftlab.unload``) drops the gate, the prefix handle restores the module's config."""

    def __init__(self, modules: list[nn.Module], gates: list[Gate]) -> None:
        self.modules = modules
        for module, gate in zip(modules, gates):
            module.config._attn_implementation_internal = TOKEN_GATED_IMPLEMENTATION  # the prefixed copy
            module.__dict__[_GATE_SLOT] = gate

    def remove(self) -> None:
        for module in self.modules:
            module.__dict__.pop(_GATE_SLOT, None)


def _gate_layers(model: nn.Module, kind: type[AdapterLayer], gate_on: Literal["input", "output"],
                 pooling: Pooling) -> None:
    for name, module in [(n, m) for n, m in model.named_modules() if type(m) is kind]:
        replace_module(model, name, GatedLayer(module, gate_on, pooling))


def _add_gated_prefixes(model: nn.Module, config: PrefixTuningConfig,
                        pooling: Pooling) -> tuple[PrefixHandle, _TokenGateSlots | None]:
    sites = discover_sites(model, attention_module_names(model, config.cross_attention))
    encoder = prefix_tuning.add_prefix_encoder(model, sites, config)
    embeddings = model.get_input_embeddings().weight
    entry_pattern = BLOCKS[architecture_of(model).name]["attention"][0]
    entries = find_modules(model, entry_pattern)
    site_entries = [next((n, m) for n, m in entries if n.startswith(site.name + ".")) for site in sites]
    gates = PrefixGates(encoder, [linear_shape(module)[0] for _, module in site_entries], embeddings, pooling)
    model.add_module(GATES_NAME, gates)
    for (name, module), gate in zip(site_entries, gates.gates):
        replace_module(model, name, BlockInputTap(module, gate))
    handle = attach_prefixes(model, sites, gates.key_values)
    slots = None
    if pooling == "token":
        slots = _TokenGateSlots([model.get_submodule(site.name) for site in sites], list(gates.gates))
    return handle, slots


def inject(model: nn.Module, config: UniPELTConfig) -> Injection:
    parts = inject_parts(model, [config.lora, config.adapter])
    _gate_layers(model, LoRALinear, "input", config.gate_pooling)
    _gate_layers(model, SequentialAdapter, "output", config.gate_pooling)
    handle, slots = _add_gated_prefixes(model, config.prefix, config.gate_pooling)
    injection = combine(parts, prefix_tuning.count_trainable)
    injection.count_note = prefix_tuning.count_note(config.prefix)
    if slots is not None:
        injection.hooks.append(slots)
    injection.hooks.append(DetachModules(model, handle, (ENCODER_NAME, GATES_NAME)))
    return injection


AttentionInterface.register(TOKEN_GATED_IMPLEMENTATION, token_gated_prefix_attention)

register(MethodSpec(
    name="unipelt",
    family="hybrid",
    config_class=UniPELTConfig,
    inject=inject,
    paper="Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning "
          "(arXiv 2110.07577)",
    summary="Adapter, prefix-tuning and LoRA together, each scaled by a learned gate in (0, 1).",
    hooks=MethodHooks(export_state=prefix_tuning.export_state, import_state=prefix_tuning.import_state),
))
