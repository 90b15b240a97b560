"""VeRA <-> peft ``VERA``: the trained vectors ``vera_lambda_b`` (out) and ``vera_lambda_d`` (r) keep their
names; the shared frozen ``A``, ``B`` are regenerated on both sides from the same seed
(``projection_seed`` = peft's ``projection_prng_key``), so exports leave them out (``save_projection``
false) and imports ignore saved copies."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import Grouped, PeftConverter, exact_patterns, peft_field, register_converter

VECTORS = ("vera_lambda_b", "vera_lambda_d")


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    document = {"r": config.rank, "projection_prng_key": config.projection_seed, "save_projection": False,
                "vera_dropout": config.dropout, "d_initial": config.d_initial, "target_modules": sorted(grouped),
                "bias": "none", "fan_in_fan_out": base.get("model_type") == "gpt2", "init_weights": True}
    return document, grouped


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    grouped = {module: weights for module, weights in grouped.items() if set(weights) & set(VECTORS)}
    config = get_method("vera").config_class.from_options({
        "rank": peft_field(document, "r", int), "projection_seed": peft_field(document, "projection_prng_key", int, 0),
        "d_initial": peft_field(document, "d_initial", float, 0.1),
        "dropout": peft_field(document, "vera_dropout", float, 0.0), "target_modules": exact_patterns(sorted(grouped)),
    })
    return config, grouped


register_converter(PeftConverter(
    method="vera", peft_type="VERA", weights=VECTORS, peft_weights=(*VECTORS, "vera_A", "vera_B"),
    to_peft=_to_peft, from_peft=_from_peft,
))
