"""Prompt tuning <-> peft ``PROMPT_TUNING``: peftlab's ``prompt_embedding.prompt`` (P x hidden) is peft's
``prompt_embeddings``. peft prepends it to the input embeddings as peftlab does (an encoder-decoder's
encoder input only); peft's causal-LM logits keep the prompt's P leading rows, peftlab's drop them."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import (
    Grouped,
    PeftConverter,
    UnsupportedPeftAdapter,
    peft_field,
    register_converter,
    task_type_for,
)

MODULE = "prompt_embedding"  # where peftlab's prompt_tuning adds its module


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    prompt = grouped[MODULE]["prompt"]
    encoder_decoder = base.get("model_type") in ("t5", "mt5", "bart", "mbart")
    # peft prepends prompts only in its task-specific models, whatever their head
    document = {"task_type": task_type_for(base.get("architecture"), base.get("model_type")),
                "num_virtual_tokens": prompt.shape[0], "token_dim": prompt.shape[1],
                "num_transformer_submodules": 2 if encoder_decoder else 1,
                "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None}
    if encoder_decoder:  # peft keeps a (never used) decoder copy after the encoder's prompt
        import torch

        prompt = torch.cat([prompt, prompt])
    return document, {"": {"prompt_embeddings": prompt}}


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    tokens = peft_field(document, "num_virtual_tokens", int)
    prompt = grouped[""]["prompt_embeddings"] if "" in grouped else None
    if prompt is None or prompt.shape[0] < tokens:
        raise UnsupportedPeftAdapter("the PROMPT_TUNING adapter holds no prompt_embeddings of num_virtual_tokens rows")
    config = get_method("prompt_tuning").config_class.from_options({"num_virtual_tokens": tokens, "init": "random"})
    return config, {MODULE: {"prompt": prompt[:tokens]}}


register_converter(PeftConverter(
    method="prompt_tuning", peft_type="PROMPT_TUNING", weights=("prompt",), peft_weights=("prompt_embeddings",),
    to_peft=_to_peft, from_peft=_from_peft, prefix="base_model.",
))
