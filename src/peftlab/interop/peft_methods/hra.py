"""HRA <-> peft ``HRA``: the reflection vectors ``hra_u`` (in x r) keep their name and layout; ``r`` and
``apply_GS`` keep peft's names. The orthogonality regulariser's weight is a training option peft does not
have: it is not exported, and an import starts it at 0."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.interop.peft_converters import Grouped, PeftConverter, peft_field, register_converter
from peftlab.interop.peft_methods._orthogonal import common_fields, config_for, refuse_common


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    return {**common_fields(config, grouped, base), "r": config.r, "apply_GS": config.apply_GS}, grouped


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    refuse_common(document)
    options = {"r": peft_field(document, "r", int), "apply_GS": peft_field(document, "apply_GS", bool, False)}
    return config_for("hra", grouped, options), grouped


register_converter(PeftConverter("hra", "HRA", ("hra_u",), ("hra_u",), _to_peft, _from_peft))
