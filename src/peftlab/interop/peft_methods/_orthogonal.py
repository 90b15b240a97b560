"""What the OFT, BOFT and HRA converters share (peft 0.21's forms, which peftlab's layers follow).

peft's three layers wrap ``nn.Linear`` only, not GPT-2's ``Conv1D``, so such adapters have no peft form
(merge them instead). peft adjusts a block size that does not divide a layer; peftlab refuses one, so every
adapter it exports has the sizes its config says.
"""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import (
    CONV1D_MODEL_TYPES,
    Grouped,
    UnsupportedPeftAdapter,
    exact_patterns,
    refuse,
)

PEFT_VERSION = "0.21.2"  # the form written (peft >= 0.18 reads the Neumann series as peftlab computes it)


def common_fields(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> dict[str, Any]:
    if base.get("model_type") in CONV1D_MODEL_TYPES:
        raise UnsupportedPeftAdapter(
            f"peft's {config.method.upper()} cannot wrap GPT-2's Conv1D layers, so this adapter has no peft form; "
            f"merge it instead (peftlab merge)"
        )
    return {"target_modules": sorted(grouped), "bias": "none", "fan_in_fan_out": False, "init_weights": True,
            "peft_version": PEFT_VERSION}


def refuse_common(document: dict[str, Any]) -> None:
    refuse(document, "bias", ("none", None), "peftlab's orthogonal layers train no bias")
    refuse(document, "layers_to_transform", (None,), "give the layers as target modules instead")


def config_for(method: str, grouped: Grouped, options: dict[str, Any]) -> MethodConfig:
    return get_method(method).config_class.from_options({**options, "target_modules": exact_patterns(sorted(grouped))})


