"""Prefix tuning <-> peft ``PREFIX_TUNING``: peftlab's folded ``prefix_encoder.prefixes`` (P x sum_l 2 d_l,
each layer's keys then values, layer by layer) is peft's ``prompt_embeddings``, which peft views as
``(P, num_layers * 2, kv_heads, head_dim)`` and feeds as ``past_key_values``: the same numbers in the
same order. peft's cache moves the real tokens to positions P..P+n-1, so only adapters trained with
``positions="after_prefix"`` compute the same thing there. peft prefixes T5's decoder self-attention only
and, the prefix being cached tokens, gives it T5's relative position bias; peftlab's prefix columns take no
position bias (even with ``encoder_self_attention=False``): T5 adapters are not converted; nor are BERT/RoBERTa
ones (peft needs ``past_key_values``, which transformers 5's encoder-only models no longer take)."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import (
    Grouped,
    PeftConverter,
    UnsupportedPeftAdapter,
    peft_field,
    refuse,
    register_converter,
    task_type_for,
)

MODULE = "prefix_encoder"  # where peftlab's prefix_tuning adds its module
ENCODER_DECODER = ("t5", "mt5", "bart", "mbart")
ENCODER_ONLY = ("bert", "roberta")


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    if base.get("model_type") in ENCODER_DECODER:
        raise UnsupportedPeftAdapter(
            "peft's prefix tuning prefixes an encoder-decoder's decoder self-attention as cached tokens, under "
            "T5's relative position bias; peftlab's prefixes take no position bias: they compute different things"
        )
    if base.get("model_type") in ENCODER_ONLY:
        raise UnsupportedPeftAdapter(
            "peft runs prefix tuning through the model's past_key_values, which transformers 5's BERT/RoBERTa "
            "models do not take: peft cannot load a prefix_tuning adapter for them"
        )
    if config.positions != "after_prefix":
        raise UnsupportedPeftAdapter(
            "this prefix_tuning adapter keeps the real tokens at positions 0..n-1; peft moves them to P..P+n-1, "
            "so its outputs would differ: train with positions='after_prefix' to export to the peft format"
        )
    if config.cross_attention:
        raise UnsupportedPeftAdapter("peft has no prefixes on cross-attention only; train with cross_attention=False")
    prefixes = grouped.get(MODULE, {}).get("prefixes")
    if prefixes is None:
        raise UnsupportedPeftAdapter(
            "the adapter holds the reparameterisation MLP, not the folded prefixes: save it with "
            "keep_reparameterization=False to export it"
        )
    # num_layers, token_dim, num_attention_heads: peft reads them from the base model's config on loading
    document = {"task_type": task_type_for(base.get("architecture"), base.get("model_type")),
                "num_virtual_tokens": prefixes.shape[0], "num_transformer_submodules": 1,
                "prefix_projection": False, "init_weights": None}
    return document, {"": {"prompt_embeddings": prefixes}}


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    refuse(document, "num_transformer_submodules", (1, None),
           "peft prefixes an encoder-decoder's decoder only; peftlab's T5 prefixes differ")
    tokens = peft_field(document, "num_virtual_tokens", int)
    prefixes = grouped[""]["prompt_embeddings"] if "" in grouped else None
    if prefixes is None or prefixes.dim() != 2 or prefixes.shape[0] != tokens:
        raise UnsupportedPeftAdapter("the PREFIX_TUNING adapter holds no prompt_embeddings of num_virtual_tokens rows")
    options = {"num_virtual_tokens": tokens, "reparameterize": False, "positions": "after_prefix"}
    config = get_method("prefix_tuning").config_class.from_options(options)
    return config, {MODULE: {"prefixes": prefixes}}


register_converter(PeftConverter(
    method="prefix_tuning", peft_type="PREFIX_TUNING", weights=("prefixes",), peft_weights=("prompt_embeddings",),
    to_peft=_to_peft, from_peft=_from_peft, prefix="base_model.",
))
