"""LN tuning <-> peft ``LN_TUNING``.

peft trains a copy of each normalisation layer and saves it as ``<module>.ln_tuning_layers.<weight|bias>``;
peftlab trains the layer's own parameters, saved as ``<module>.<weight|bias>``. The norms adapted are listed
by their full names, which peft's ``target_modules`` list matching accepts.
"""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import Grouped, PeftConverter, exact_patterns, register_converter

OURS = ("weight", "bias")
PEFT_WEIGHTS = tuple(f"ln_tuning_layers.{name}" for name in OURS)


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    peft_grouped = {module: {f"ln_tuning_layers.{name}": tensor for name, tensor in weights.items()}
                    for module, weights in grouped.items()}
    return {"target_modules": sorted(grouped), "exclude_modules": None}, peft_grouped


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    ours = {module: {name.rpartition(".")[2]: tensor for name, tensor in weights.items()}
            for module, weights in grouped.items()}
    config = get_method("ln_tuning").config_class.from_options({"target_modules": exact_patterns(sorted(grouped))})
    return config, ours


register_converter(PeftConverter(
    method="ln_tuning", peft_type="LN_TUNING", weights=OURS, peft_weights=PEFT_WEIGHTS,
    to_peft=_to_peft, from_peft=_from_peft,
))
