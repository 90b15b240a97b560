"""Prefix-tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
arXiv 2101.00190).

Every self-attention layer ``l`` (T5: encoder and decoder self-attention, or the decoder's alone with
``encoder_self_attention=False``; cross-attention on request)
attends to ``P`` trainable key/value vectors before the real tokens:

    head_h = softmax(q_h [P_k^l; K_h]^T / sqrt(d) + [0; M]) [P_v^l; V_h]

The prefixes form one matrix ``P_theta`` of shape ``(P, sum_l 2 d_l)`` (``d_l`` = key/value heads x head
size of layer ``l``). As in the paper (Sec. 4.3), training goes through a reparameterisation
``P_theta[i, :] = W_2 tanh(W_1 E[i, :] + b_1) + b_2`` with ``E`` of shape ``(P, hidden)``; afterwards
:func:`fold` replaces the MLP by the plain ``P_theta`` (outputs unchanged, bit for bit). A saved adapter
holds only the folded ``P_theta`` unless ``keep_reparameterization=True``.

Parameter counts: the survey (like the paper's "0.1%") counts the folded prefix, ``P x sum_l 2 d_l``;
that is what ``peftlab.parameter_counts`` reports. :func:`prefix_parameter_counts` also reports the
reparameterisation's size, the number of parameters the optimizer updates during training.

Not equal to the base at initialisation: even zero prefix values would take softmax mass from the real
tokens and so change the outputs, and the paper's random initialisation changes them anyway.

Positions (``positions``): by default the real tokens keep positions ``0..n-1``. ``after_prefix`` moves
them to ``P..P+n-1``, as if the prefix were ``P`` earlier tokens; that is what HF peft computes (it feeds
the prefix as ``past_key_values``), so only such adapters export to the peft format with equal outputs.
It applies to models with absolute (GPT-2, BERT/RoBERTa) or rotary (LLaMA) positions; T5's relative
position bias has no positions to move.

The attention plumbing (transformers' attention interface, masks, T5 position bias) is the reusable
:mod:`peftlab.methods.shared.prefix_attention`; the prefixes and their MLP are
:class:`~peftlab.methods.additive._prefix_encoder.PrefixEncoder`, and this file applies, counts and saves them.
Hybrids (MAM, UniPELT) call :func:`inject` with a :class:`PrefixTuningConfig` next to their other parts
and may reuse :func:`count_trainable`, :func:`export_state` and :func:`import_state`: these act on the
prefix encoder and pass every other adapter parameter of the model through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from peftlab.core.architectures import architecture_of
from peftlab.core.config import MethodConfig, option, require
from peftlab.core.errors import UserError
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.serialization import AdapterFileError
from peftlab.core.state import Injection, adapter_parameters
from peftlab.methods.additive._prefix_encoder import PrefixEncoder
from peftlab.methods.shared.compose import DetachModules
from peftlab.methods.shared.prefix_attention import (
    Site,
    attach_prefixes,
    attention_module_names,
    discover_sites,
)

ENCODER_NAME = "prefix_encoder"


@dataclass(frozen=True, kw_only=True)
class PrefixTuningConfig(MethodConfig):
    method = "prefix_tuning"

    num_virtual_tokens: int = option(10, "Prefix length P: key/value vectors prepended in every attention layer.")
    reparameterize: bool = option(
        True, "Train the prefixes through the paper's MLP (E -> tanh -> prefixes); fold(model) removes it."
    )
    mlp_hidden_size: int = option(512, "Hidden width of the reparameterisation MLP.")
    cross_attention: bool = option(False, "Also prefix the decoder's cross-attention (encoder-decoder models).")
    encoder_self_attention: bool = option(
        True, "Prefix the encoder's self-attention (encoder-decoder models); False prefixes the decoder only, "
        "as HF peft does, and backward then never enters the encoder."
    )
    keep_reparameterization: bool = option(
        False, "Save the embedding and MLP (to resume training) instead of the folded prefixes."
    )
    init_std: float = option(
        1.0, "Standard deviation of the initial prefix embeddings E (of the prefixes when reparameterize=False)."
    )

    positions: Literal["unshifted", "after_prefix"] = option(
        "unshifted",
        "Real tokens' position ids: 'unshifted' keeps 0..n-1; 'after_prefix' uses P..P+n-1 as HF peft does "
        "(needed to export to the peft format; not for T5, whose positions are relative).",
    )

    def validate(self) -> None:
        require(self.num_virtual_tokens > 0, self, "num_virtual_tokens", "must be positive")
        require(self.mlp_hidden_size > 0, self, "mlp_hidden_size", "must be positive")
        require(self.init_std > 0, self, "init_std", "must be positive")


def add_prefix_encoder(model: nn.Module, sites: list[Site], config: PrefixTuningConfig) -> PrefixEncoder:
    """The prefixes for ``sites``, on the embeddings' device, registered on ``model`` as ``ENCODER_NAME``."""
    embeddings = model.get_input_embeddings().weight
    encoder = PrefixEncoder(sites, config.num_virtual_tokens, embeddings.shape[1],
                            mlp_hidden_size=config.mlp_hidden_size if config.reparameterize else None,
                            init_std=config.init_std, keep_reparameterization=config.keep_reparameterization)
    model.add_module(ENCODER_NAME, encoder.to(embeddings.device))
    return encoder


def prefix_encoder(model: nn.Module) -> PrefixEncoder:
    encoder = model._modules.get(ENCODER_NAME)
    if not isinstance(encoder, PrefixEncoder):
        raise ValueError("this model carries no prefix-tuning prefixes (peftlab.apply(model, 'prefix_tuning'))")
    return encoder


def fold(model: nn.Module) -> None:
    """Replace the reparameterisation MLP by the prefixes it produces (after training; outputs unchanged).

    An optimizer built before folding holds the removed MLP parameters: build a new one to keep training.
    """
    prefix_encoder(model).fold()


def _other_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters outside the prefix encoder (e.g. ``modules_to_save``)."""
    return {n: p for n, p in adapter_parameters(model) if not n.startswith(ENCODER_NAME + ".")}


def prefix_parameter_counts(model: nn.Module) -> dict[str, int]:
    """``folded_prefix``: P x sum_l 2 d_l (the survey's count); ``reparameterization``: the parameters the
    optimizer updates now (embedding + MLP before folding, the prefix itself after)."""
    encoder = prefix_encoder(model)
    return {
        "folded_prefix": encoder.folded_size,
        "reparameterization": sum(p.numel() for _, p in encoder.adapter_parameters()),
    }


def count_note(config: PrefixTuningConfig) -> str:
    return "prefixes counted folded; the reparameterisation MLP that trains them is not" if config.reparameterize else ""


def count_trainable(model: nn.Module) -> int:
    return prefix_encoder(model).folded_size + sum(p.numel() for p in _other_parameters(model).values())


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The saved tensors: the folded ``P_theta`` (or the MLP with ``keep_reparameterization``)."""
    encoder = prefix_encoder(model)
    tensors = {n: p.detach() for n, p in _other_parameters(model).items()}
    if encoder.keep_reparameterization:
        tensors.update({f"{ENCODER_NAME}.{n}": p.detach() for n, p in encoder.adapter_parameters()})
    else:
        tensors[f"{ENCODER_NAME}.prefixes"] = encoder.folded_prefixes()
    return tensors


def import_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load saved tensors; folded prefixes fold the model's encoder first."""
    if f"{ENCODER_NAME}.prefixes" in tensors:
        fold(model)
    expected = dict(adapter_parameters(model))
    if set(expected) != set(tensors):
        raise AdapterFileError(
            f"the prefix-tuning adapter does not fit this model: it holds {sorted(set(tensors) - set(expected))} "
            f"and lacks {sorted(set(expected) - set(tensors))}; was it trained on another base model?"
        )
    for name, target in expected.items():
        if tensors[name].shape != target.shape:
            raise AdapterFileError(
                f"prefix-tuning tensor {name} has shape {tuple(tensors[name].shape)}, the model expects "
                f"{tuple(target.shape)}: the adapter was trained for a base model of another shape"
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(device=target.device, dtype=target.dtype))


class _ShiftPositions:
    """Model forward pre-hook (``positions="after_prefix"``): the real tokens sit at ``P + position``.

    Without ``position_ids`` the model would number the new tokens ``past..past+n-1`` (``past`` = tokens in
    the KV cache, which never holds the prefix); with them, they are the caller's positions of the text.
    """

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if args:
            raise PrefixPositionsError(
                "prefix_tuning with positions='after_prefix' needs the model's inputs as keywords (input_ids=...)"
            )
        positions = kwargs.get("position_ids")
        if positions is None:
            tokens = next((kwargs[k] for k in ("input_ids", "inputs_embeds") if kwargs.get(k) is not None), None)
            if tokens is None:
                return args, kwargs
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            positions = torch.arange(past, past + tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
        kwargs["position_ids"] = positions + self.length
        return args, kwargs


class PrefixPositionsError(UserError, ValueError):
    """``positions="after_prefix"`` on a model without positions to move."""


def inject(model: nn.Module, config: PrefixTuningConfig) -> Injection:
    architecture = architecture_of(model)
    if config.positions == "after_prefix" and (architecture is None or architecture.name == "t5"):
        raise PrefixPositionsError(
            "positions='after_prefix' moves absolute or rotary position ids (bert/roberta, llama, gpt2); "
            f"{getattr(architecture, 'name', type(model).__name__)} has none to move: use positions='unshifted'"
        )
    sites = discover_sites(model, attention_module_names(model, config.cross_attention, config.encoder_self_attention))
    encoder = add_prefix_encoder(model, sites, config)
    handle = attach_prefixes(model, sites, encoder.key_values, traceable=encoder.uniform)
    hooks: list[Any] = [DetachModules(model, handle, (ENCODER_NAME,))]  # peftlab.unload takes it all off
    if config.positions == "after_prefix":
        hooks.append(model.register_forward_pre_hook(_ShiftPositions(config.num_virtual_tokens), with_kwargs=True))
    return Injection(count_trainable=count_trainable, hooks=hooks, count_note=count_note(config))


register(MethodSpec(
    name="prefix_tuning",
    family="additive",
    config_class=PrefixTuningConfig,
    inject=inject,
    paper="Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv 2101.00190)",
    summary="Trainable key/value prefixes in every attention layer, trained through an MLP and folded after.",
    hooks=MethodHooks(export_state=export_state, import_state=import_state),
))
