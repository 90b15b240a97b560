"""Trainable tokens <-> peft ``TRAINABLE_TOKENS``: the rows keep their values (peft's ``trainable_tokens_delta``
holds the rows, not a difference); peft also saves a copy under each module tied to the embedding, which the
import checks and drops (:mod:`peftlab.interop.peft_tokens`)."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import Grouped, PeftConverter, register_converter
from peftlab.interop.peft_tokens import INDICES, PEFT_ROWS, ROWS, tokens_from_peft


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    (owner, weights), = grouped.items()
    document = {"token_indices": weights[INDICES].tolist(), "target_modules": owner, "init_weights": True}
    return document, {owner: {PEFT_ROWS: weights[ROWS]}}


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    tensors = {f"{module}.{PEFT_ROWS}": weights[PEFT_ROWS] for module, weights in grouped.items()}
    indices, ours, _ = tokens_from_peft(document, tensors, PEFT_ROWS, document.get("target_modules"))
    config = get_method("trainable_tokens").config_class.from_options({"token_indices": indices})
    owner = next(iter(ours)).rpartition(".")[0]
    return config, {owner: {name.rpartition(".")[2]: tensor for name, tensor in ours.items()}}


register_converter(PeftConverter(
    method="trainable_tokens", peft_type="TRAINABLE_TOKENS", weights=(ROWS, INDICES), peft_weights=(PEFT_ROWS,),
    to_peft=_to_peft, from_peft=_from_peft,
))
