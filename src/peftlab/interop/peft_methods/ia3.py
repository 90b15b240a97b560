"""(IA)³ <-> peft ``IA3``.

peft stores each scaling vector as ``<module>.ia3_l``, shaped ``(out, 1)`` on a scaled output and
``(1, in)`` on a feed-forward layer whose input is scaled; peftlab stores the flat vector and knows
which layers scale their input from ``feedforward_modules``.
"""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import (
    CONV1D_MODEL_TYPES,
    Grouped,
    PeftConverter,
    UnsupportedPeftAdapter,
    exact_patterns,
    register_converter,
    select_modules,
)


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    modules = sorted(grouped)
    feedforward = set(select_modules(modules, config.feedforward_modules, base.get("model_type")))
    out = {
        module: {"ia3_l": weights["ia3_l"][None, :] if module in feedforward else weights["ia3_l"][:, None]}
        for module, weights in grouped.items()
    }
    document = {
        "target_modules": modules,
        "feedforward_modules": sorted(feedforward),
        "fan_in_fan_out": base.get("model_type") in CONV1D_MODEL_TYPES,
        "init_ia3_weights": True,
        "exclude_modules": None,
    }
    return document, out


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    ours: Grouped = {}
    feedforward = []
    for module, weights in grouped.items():
        vector = weights["ia3_l"]
        if vector.ndim != 2 or 1 not in vector.shape:
            raise UnsupportedPeftAdapter(f"peft IA3 vector of {module} has shape {tuple(vector.shape)}, not (n, 1) or (1, n)")
        if vector.shape[0] == 1 and vector.shape[1] != 1:
            feedforward.append(module)
        ours[module] = {"ia3_l": vector.reshape(-1)}
    if not feedforward:
        raise UnsupportedPeftAdapter(
            "this IA3 adapter scales no feed-forward input; peftlab's ia3 needs at least one feedforward module"
        )
    config = get_method("ia3").config_class.from_options({
        "target_modules": exact_patterns(sorted(grouped)),
        "feedforward_modules": exact_patterns(sorted(feedforward)),
    })
    return config, ours


register_converter(PeftConverter(
    method="ia3",
    peft_type="IA3",
    weights=("ia3_l",),
    peft_weights=("ia3_l",),
    to_peft=_to_peft,
    from_peft=_from_peft,
))
