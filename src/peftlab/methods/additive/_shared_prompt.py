"""Prompt tuning on decoder-only models: the prompt's positions computed once per batch, not per example.

In a causal decoder the prompt sits before the text, so its hidden states in every layer depend on the
prompt alone: all ``B`` examples of a batch compute the same ones, and prepending ``P`` virtual tokens to
each example sends ``B * P`` prompt positions through every layer where ``P`` would do. Here the batch
runs packed, as one sequence of ``P + B * L`` positions (the prompt once, then each example's ``L``
text positions, at positions ``P .. P+L-1`` as after a prepended prompt), so every linear layer, norm
and MLP sees ``(B - 1) * P`` fewer rows. Only attention needs the examples apart; at every layer:

    prompt rows:   softmax(Q_p K_p^T * s + causal) V_p
    example b:     softmax(Q_b [K_p; K_b]^T * s + [0; M_b]) [V_p; V_b]    (prefix attention, M_b: causal, padding)

Before the head the prompt's final hidden states go in front of each example's again, ``(B, P + L,
hidden)``, so logits, labels and loss line up as on the plain path (the last prompt position still
predicts the first text token); the prompt's gradient sums over the batch through the broadcast.

It computes the same function as prepending (tests compare logits, loss and gradients). It is used where
that holds and nothing else needs the unpacked layout: no KV cache kept (training, or
``use_cache=False``), batch above 1, sdpa attention, no dropout active (one set of prompt rows would draw
one mask for every example), no sliding-window attention, no activation checkpointing, unsharded
parameters, no per-layer outputs asked for, no ``token_type_ids``, a 2-D attention mask or none.
Otherwise the prompt is prepended to every example.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.modeling_utils import AttentionInterface

from peftlab.core.checkpointing import checkpointing_enabled
from peftlab.methods.shared.prefix_attention import attention_after_prefix, attention_module_names

IMPLEMENTATION = "peftlab_shared_prompt"
SHARED_FAMILIES = ("llama", "gpt2")  # decoder-only families whose attention modules prefix attention knows
_OWNER = "peftlab_shared_prompt"  # the attention modules' reference to their SharedPrompt (not a submodule)
_DROPOUT_OPTIONS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout")


@dataclass(frozen=True)
class Packing:
    """The layout of the packed forward under way: ``prompt_length + batch * length`` positions."""

    prompt_length: int
    batch: int
    length: int
    text_mask: torch.Tensor | None  # (B, 1, L, L) bool, causal and padding; None: causal, no padding


class SharedPrompt:
    """Packs a batch behind one copy of the prompt and unpacks the decoder's output (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.attention = [model.get_submodule(name) for name in attention_module_names(model)]
        for module in self.attention:
            module.__dict__[_OWNER] = self
        self.packing: Packing | None = None
        self._configs: list[Any] = []  # the attention modules' own configs while a packed forward runs

    def applies(self, model: nn.Module, kwargs: dict[str, Any], batch: int) -> bool:
        """Whether this forward may run packed (the conditions of the module docstring)."""
        config = model.config
        keeps_cache = kwargs.get("use_cache", getattr(config, "use_cache", False)) and not model.training
        asks_per_layer = any(kwargs.get(name, getattr(config, name, False))
                             for name in ("output_hidden_states", "output_attentions"))
        return (batch > 1 and not keeps_cache and not asks_per_layer and not kwargs.get("logits_to_keep")
                and kwargs.get("token_type_ids") is None  # GPT-2 would add type 0's embedding to the prompt
                and (kwargs.get("attention_mask") is None or kwargs["attention_mask"].dim() == 2)
                and config._attn_implementation == "sdpa"
                and all(module.config._attn_implementation == "sdpa" for module in self.attention)
                and not getattr(config, "sliding_window", None)
                and not checkpointing_enabled(model)
                and not (model.training and _dropout_active(model))
                and not any(isinstance(parameter, DTensor) for parameter in model.parameters()))

    def pack(self, prompt: torch.Tensor, embeds: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The packed forward's keywords: ``(1, P + B*L)`` embeddings and positions, no mask, no cache."""
        size, (batch, length, hidden) = prompt.shape[0], embeds.shape
        device = embeds.device
        kwargs["inputs_embeds"] = torch.cat([prompt[None], embeds.reshape(1, batch * length, hidden)], dim=1)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(length, device=device)[None]
        text_positions = (positions + size).expand(batch, length).reshape(1, -1)
        kwargs["position_ids"] = torch.cat([torch.arange(size, device=device)[None], text_positions], dim=1)
        mask = kwargs.get("attention_mask")
        kwargs["attention_mask"] = None  # the examples' masks act inside shared_prompt_attention
        kwargs["use_cache"] = False
        self.packing = Packing(size, batch, length, _text_mask(mask, length))
        self._configs = [module.config for module in self.attention]
        for module in self.attention:
            packed = copy.copy(module.config)
            packed._attn_implementation_internal = IMPLEMENTATION
            module.config = packed
        return kwargs

    def unpack_hidden(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook of the decoder stack: ``(1, P + B*L, H)`` back to ``(B, P + L, H)``."""
        packing = self.packing
        if packing is not None:
            packed = output["last_hidden_state"]
            prompt = packed[:, :packing.prompt_length].expand(packing.batch, -1, -1)
            text = packed[:, packing.prompt_length:].reshape(packing.batch, packing.length, -1)
            output["last_hidden_state"] = torch.cat([prompt, text], dim=1)
        return output

    def release(self) -> None:
        """The attention modules' own configs again (also after a packed forward that raised)."""
        for module, config in zip(self.attention, self._configs):
            module.config = config
        self._configs, self.packing = [], None

    def detach(self) -> None:
        self.release()
        for module in self.attention:
            module.__dict__.pop(_OWNER, None)


def shared_prompt_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, **kwargs):
    """The registered attention of a packed forward: the prompt rows causally among themselves, each
    example's rows over the prompt's keys and values as a prefix, then its own. ``attention_mask`` is the
    mask transformers built for the packed sequence: the examples' own masks replace it."""
    packing = module.__dict__[_OWNER].packing
    size, batch, length = packing.prompt_length, packing.batch, packing.length
    sdpa = AttentionInterface._global_mapping["sdpa"]
    prompt_keys, prompt_values = key[:, :, :size], value[:, :, :size]
    prompt_output, _ = sdpa(module, query[:, :, :size], prompt_keys, prompt_values, None, **kwargs)

    def per_example(packed: torch.Tensor) -> torch.Tensor:  # (1, heads, P + B*L, d) -> (B, heads, L, d)
        return packed[0, :, size:].unflatten(1, (batch, length)).transpose(0, 1)

    text_output, _ = attention_after_prefix(module, "sdpa", prompt_keys, prompt_values, per_example(query),
                                            per_example(key), per_example(value), packing.text_mask, **kwargs)
    text_output = text_output.reshape(1, batch * length, *text_output.shape[2:])  # (1, B*L, heads, d)
    return torch.cat([prompt_output, text_output], dim=1), None


def _text_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The examples' ``(B, 1, L, L)`` boolean attention mask, causal and padding; None without padding."""
    if mask is None or bool(mask.all()):
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return causal[None, None] & mask.bool()[:, None, None, :]


def _dropout_active(model: nn.Module) -> bool:
    """Whether a training forward of ``model`` would draw dropout masks: a dropout layer, or a config option
    that a functional dropout reads (LLaMA's attention dropout)."""
    return (any(float(getattr(model.config, name, 0.0) or 0.0) > 0 for name in _DROPOUT_OPTIONS)
            or any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules()))


AttentionInterface.register(IMPLEMENTATION, shared_prompt_attention)
