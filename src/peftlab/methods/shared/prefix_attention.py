"""Prefix attention: prepend per-layer keys and values inside transformers' attention-function interface.

transformers 5 computes attention in BERT/RoBERTa, T5, LLaMA and GPT-2 through
``ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)``.
We register one more implementation, ``"peftlab_prefix"``, and give each prefixed attention module a
shallow copy of its config naming it. The wrapper concatenates the prefix in front of the keys and
values the module computed (after rotary embeddings and after the KV cache, which therefore never sees
the prefix), then calls the model's own implementation (``eager`` or ``sdpa``, read from the original
config at call time):

    head_h = softmax(q_h [P_k; K_h]^T * scaling + [0; M] + [0; B]) [P_v; V_h]

``M`` is the model's attention mask and ``B`` T5's relative position bias; the prefix columns get
zeros in both, so every query row (padding rows included) attends to the whole prefix. Token positions
are untouched: rotary angles and learned position ids of the real tokens do not move. Under sdpa on CPU,
a grouped-query model's prefixed attention calls SDPA itself with the heads grouped: transformers would
repeat the keys and values per query head, as it does whenever a mask is given.

Reuse (MAM, UniPELT's gated prefix, ProPETL's masked prefix): write a provider, a callable
``provider(index, query) -> (keys, values)`` returning tensors of shape ``(batch or 1, kv_heads, P,
head_dim)`` for the ``index``-th site (``query`` is the ``(batch, heads, q_len, head_dim)`` query, for
per-example gates), then::

    sites = discover_sites(model, attention_module_names)   # shapes, and a clear error if unsupported
    handle = attach_prefixes(model, sites, provider)          # handle.remove() takes it off again

The provider runs inside the attention layer, so gradient checkpointing recomputes it with the layer.

Compiled blocks (:mod:`peftlab.train.speedups.compile`): a provider that reads its site from a Python ``int`` would
make the compiler build one graph per layer, so by default the prefixed attention runs eagerly between
two compiled halves of each block. A provider attached with ``traceable=True`` receives the index as a
one-element ``int64`` tensor instead (a buffer of the attention module, so it follows ``model.to``) and
must select with it (``index_select``), never turn it into an ``int``: then one graph serves every layer,
prefixed attention included.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface

from peftlab.core.architectures import architecture_of
from peftlab.core.errors import UserError
from peftlab.core.probe import probe_inputs
from peftlab.core.targeting import find_modules

IMPLEMENTATION = "peftlab_prefix"
SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa")
_SLOT = "peftlab_prefix_slot"
_INDEX = "peftlab_prefix_index"  # the traceable providers' site index: a non-persistent buffer

Provider = Callable[[int | torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Attention modules (module-name suffix patterns) per family: self-attention, and cross-attention.
SELF_ATTENTION = {"bert": r"attention\.self", "t5": r"SelfAttention", "llama": r"self_attn", "gpt2": r"attn"}
CROSS_ATTENTION = {"t5": r"EncDecAttention"}
ENCODER_STACK = "encoder"  # the encoder stack's module name in encoder-decoder models


class PrefixAttentionError(UserError, RuntimeError):
    """The model's attention cannot take a prefix (the message names the case and the fix)."""


@dataclass(frozen=True)
class Site:
    """One attention module that takes a prefix, with the shapes of its keys and values."""

    name: str
    kv_heads: int
    key_dim: int
    value_dim: int

    @property
    def width(self) -> int:
        """Numbers per prefix position: keys and values of every key/value head."""
        return self.kv_heads * (self.key_dim + self.value_dim)


@dataclass
class _Slot:
    index: int
    provider: Provider | None  # None while discovering shapes
    config: object  # the module's original config: its implementation is read at call time
    traceable: bool = False  # the provider takes the index as the module's int64 buffer (see the docstring)
    seen: tuple[int, int, int] | None = field(default=None)


def attention_module_names(model: nn.Module, cross_attention: bool = False, encoder: bool = True) -> list[str]:
    """The names of the model's self-attention modules (and T5's cross-attention when asked); with
    ``encoder=False``, an encoder-decoder's decoder modules only."""
    architecture = architecture_of(model)
    if architecture is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise PrefixAttentionError(
            f"prefixes know the attention modules of bert/roberta, t5, llama and gpt2 models; "
            f"{model_type!r} is not one of them"
        )
    patterns = [SELF_ATTENTION[architecture.name]]
    if cross_attention:
        if architecture.name not in CROSS_ATTENTION:
            raise PrefixAttentionError(
                f"cross_attention=True needs an encoder-decoder model; {architecture.name} has no cross-attention"
            )
        patterns.append(CROSS_ATTENTION[architecture.name])
    names = [name for name, _ in find_modules(model, patterns, types=(nn.Module,))]
    if encoder:
        return names
    if architecture.name not in CROSS_ATTENTION:
        raise PrefixAttentionError(
            f"encoder_self_attention=False leaves an encoder-decoder's encoder unprefixed; {architecture.name} has "
            f"no decoder stack, so nothing would be prefixed: keep encoder_self_attention=True"
        )
    return [name for name in names if not name.startswith(f"{ENCODER_STACK}.")]


def discover_sites(model: nn.Module, names: Sequence[str]) -> list[Site]:
    """Run the probe input once to learn each module's key/value shapes and to check that every one
    routes its attention through transformers' attention interface."""
    modules = [model.get_submodule(name) for name in names]
    for module in modules:
        _check_module(module)
    handle = _install(modules, [None] * len(modules))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(**probe_inputs(model, batch=1, length=4))
        seen = [module.__dict__[_SLOT].seen for module in modules]
    finally:
        model.train(was_training)
        handle.remove()
    silent = [name for name, shape in zip(names, seen) if shape is None]
    if silent:
        raise PrefixAttentionError(
            f"{type(model.get_submodule(silent[0])).__name__} ({silent[0]}) does not compute attention through "
            f"transformers' attention interface, so it cannot take a prefix"
        )
    return [Site(name, *shape) for name, shape in zip(names, seen)]


def attach_prefixes(model: nn.Module, sites: Sequence[Site], provider: Provider,
                    traceable: bool = False) -> PrefixHandle:
    """Make ``sites[i]`` attend to ``provider(i, query)``; returns the handle that takes it off.

    ``traceable=True``: ``i`` arrives as a one-element ``int64`` tensor, so compiled blocks trace the
    prefixed attention once for all layers (the provider must select with it, not convert it)."""
    return _install([model.get_submodule(site.name) for site in sites], [provider] * len(sites), traceable)


class PrefixHandle:
    """Restores the attention modules' configs (``remove``), like a torch hook handle."""

    def __init__(self, modules: list[nn.Module], configs: list[object]) -> None:
        self.modules, self.configs = modules, configs

    def remove(self) -> None:
        for module, config in zip(self.modules, self.configs):
            if _SLOT in module.__dict__:
                module.config = config
                del module.__dict__[_SLOT]
                module._buffers.pop(_INDEX, None)


def _check_module(module: nn.Module) -> None:
    kind = type(module).__name__
    if _SLOT in module.__dict__:
        raise PrefixAttentionError(f"{kind} already takes a prefix; apply prefix methods to a fresh model")
    if getattr(module, "reorder_and_upcast_attn", False):
        raise PrefixAttentionError(
            f"{kind} with reorder_and_upcast_attn=True bypasses the attention interface; "
            f"set config.reorder_and_upcast_attn=False to use prefixes"
        )
    if not hasattr(getattr(module, "config", None), "_attn_implementation"):
        raise PrefixAttentionError(f"{kind} has no transformers config, so it cannot take a prefix")


def _install(modules: list[nn.Module], providers: list[Provider | None], traceable: bool = False) -> PrefixHandle:
    originals = []
    for index, (module, provider) in enumerate(zip(modules, providers)):
        original = module.config
        prefixed = copy.copy(original)
        prefixed._attn_implementation_internal = IMPLEMENTATION
        module.config = prefixed
        module.__dict__[_SLOT] = _Slot(index=index, provider=provider, config=original, traceable=traceable)
        if traceable:
            device = next(module.parameters()).device
            module.register_buffer(_INDEX, torch.tensor([index], device=device), persistent=False)
        originals.append(original)
    return PrefixHandle(modules, originals)


def _base_function(module: nn.Module, implementation: str) -> Callable:
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise PrefixAttentionError(
            f"prefixes work with the eager and sdpa attention implementations, not {implementation!r}; "
            f"call model.set_attn_implementation('sdpa') first"
        )
    if implementation == "sdpa":
        return AttentionInterface._global_mapping["sdpa"]
    # transformers' convention: each modeling file defines its own eager_attention_forward
    eager = vars(sys.modules[type(module).__module__]).get("eager_attention_forward")
    if eager is None:
        raise PrefixAttentionError(f"{type(module).__name__} has no eager_attention_forward; use sdpa attention")
    return eager


def prefix_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, **kwargs):
    """The registered ``peftlab_prefix`` implementation: prefix the keys/values, then call the base one."""
    slot: _Slot | None = module.__dict__.get(_SLOT)
    if slot is None:
        raise PrefixAttentionError(f"{type(module).__name__} names {IMPLEMENTATION!r} but carries no prefix")
    if slot.traceable:
        return _prefixed_attention(module, slot, query, key, value, attention_mask, **kwargs)
    return _eager_prefixed_attention(module, slot, query, key, value, attention_mask, **kwargs)


def _prefixed_attention(module: nn.Module, slot: _Slot, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs):
    implementation = slot.config._attn_implementation
    base = _base_function(module, implementation)
    if slot.provider is None:
        slot.seen = (key.shape[1], key.shape[-1], value.shape[-1])
        return base(module, query, key, value, attention_mask, **kwargs)
    prefix_keys, prefix_values = slot.provider(getattr(module, _INDEX) if slot.traceable else slot.index, query)
    return attention_after_prefix(module, implementation, prefix_keys, prefix_values, query, key, value,
                                  attention_mask, **kwargs)


def attention_after_prefix(module: nn.Module, implementation: str, prefix_keys: torch.Tensor,
                           prefix_values: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, **kwargs):
    """``implementation``'s attention (``eager`` or ``sdpa``) of ``query`` over ``[prefix; key]`` and
    ``[prefix; value]``: the prefix is ``(1 or batch, kv_heads, P, head_dim)``, every query row attends to
    all of it, and the model's ``attention_mask`` (or causal order, when it is None) applies to the rest."""
    base = _base_function(module, implementation)
    batch, length = key.shape[0], key.shape[2]
    prefix_keys = prefix_keys.to(key.dtype).expand(batch, -1, -1, -1)  # (B, kv_heads, P, head_dim)
    prefix_values = prefix_values.to(value.dtype).expand(batch, -1, -1, -1)
    size = prefix_keys.shape[2]
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    if attention_mask is None and implementation == "sdpa" and causal and query.shape[2] > 1:
        # sdpa would apply is_causal (top-left aligned) to the real keys: spell that mask out
        attention_mask = torch.ones(query.shape[2], length, dtype=torch.bool, device=query.device).tril()[None, None]
    if attention_mask is not None:
        attention_mask = _pad_last(attention_mask[..., :length], size, fill=attention_mask.dtype == torch.bool)
    if kwargs.get("position_bias") is not None:
        kwargs["position_bias"] = _pad_last(kwargs["position_bias"][..., -length:], size, fill=0)
    key = torch.cat([prefix_keys, key], dim=2)
    value = torch.cat([prefix_values, value], dim=2)
    if _grouped_masked_on_cpu(module, implementation, query, attention_mask, kwargs):
        return _grouped_sdpa(query, key, value, attention_mask, kwargs)
    return base(module, query, key, value, attention_mask, **kwargs)


def _grouped_masked_on_cpu(module: nn.Module, implementation: str, query: torch.Tensor,
                           attention_mask: torch.Tensor | None, kwargs: dict) -> bool:
    """transformers' sdpa repeats grouped keys/values per query head whenever a mask is given (CUDA's masked
    kernels cannot group); the CPU kernel groups under a mask, and the prefix always brings one."""
    return (implementation == "sdpa" and query.device.type == "cpu" and attention_mask is not None
            and getattr(module, "num_key_value_groups", 1) > 1 and kwargs.get("position_bias") is None
            and kwargs.get("softcap") is None and not kwargs.get("output_attentions", False))


def _grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor,
                  kwargs: dict) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention for this case, with the key/value heads grouped rather than repeated."""
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0),
        scale=kwargs.get("scaling"), enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None


# an int site index would make the compiler specialise each layer's graph: such providers run eagerly
_eager_prefixed_attention = torch.compiler.disable(_prefixed_attention)


def _pad_last(tensor: torch.Tensor, size: int, fill: bool | float) -> torch.Tensor:
    """Prepend ``size`` columns of ``fill`` (attend / no bias) along the key axis."""
    pad = torch.full((*tensor.shape[:-1], size), fill, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=-1)


AttentionInterface.register(IMPLEMENTATION, prefix_attention_forward)
