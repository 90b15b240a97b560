"""BOFT <-> peft ``BOFT``: the full blocks ``boft_R`` (factors x blocks x b x b) and the output scale ``boft_s``
(out x 1) keep their names and layouts, the options peft's names. peft builds more than one butterfly factor
only where its CUDA block-diagonal kernel compiles: on a machine without it, peft keeps one factor and cannot
load an adapter with more (its ``boft_R`` then has another shape)."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.interop.peft_converters import Grouped, PeftConverter, peft_field, register_converter
from peftlab.interop.peft_methods._orthogonal import common_fields, config_for, refuse_common

WEIGHTS = ("boft_R", "boft_s")


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    document = {**common_fields(config, grouped, base), "boft_block_size": config.boft_block_size,
                "boft_block_num": config.boft_block_num, "boft_n_butterfly_factor": config.boft_n_butterfly_factor,
                "boft_dropout": config.boft_dropout}
    return document, grouped


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    refuse_common(document)
    options = {
        "boft_block_size": peft_field(document, "boft_block_size", int, 4),
        "boft_block_num": peft_field(document, "boft_block_num", int, 0),
        "boft_n_butterfly_factor": peft_field(document, "boft_n_butterfly_factor", int, 1),
        "boft_dropout": peft_field(document, "boft_dropout", float, 0.0),
    }
    return config_for("boft", grouped, options), grouped


register_converter(PeftConverter("boft", "BOFT", WEIGHTS, WEIGHTS, _to_peft, _from_peft))
