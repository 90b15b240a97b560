"""LoHa and LoKr <-> peft ``LOHA`` / ``LOKR``: the same factor names and shapes on both sides
(``hada_w1_a`` (out x r), ``hada_w1_b`` (r x in), ...; ``lokr_w1`` and ``lokr_w2`` or ``lokr_w2_a``/``_b``
with the same near-square factorisation of each side), and the same scale ``alpha / r``."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_converters import (
    CONV1D_MODEL_TYPES,
    Grouped,
    UnsupportedPeftAdapter,
    PeftConverter,
    exact_patterns,
    peft_field,
    refuse,
    register_converter,
)

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    if base.get("model_type") in CONV1D_MODEL_TYPES:
        raise UnsupportedPeftAdapter(
            f"peft's {config.method.upper()} cannot wrap GPT-2's Conv1D layers, so this adapter has no peft form; "
            f"merge it instead (peftlab merge)"
        )
    document = {"r": config.rank, "alpha": config.alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
                "target_modules": sorted(grouped), "rank_pattern": {}, "alpha_pattern": {},
                "use_effective_conv2d": False, "init_weights": True}
    if config.method == "lokr":
        document.update(decompose_both=False, decompose_factor=-1, rank_dropout_scale=False)
    return document, grouped


def _from_peft(method: str):
    def convert(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
        for name in ("rank_dropout", "module_dropout"):
            refuse(document, name, (0, 0.0, None), "peftlab's layer has no such dropout")
        refuse(document, "rank_pattern", (None,), "per-module ranks differ; peftlab's layer has one rank")
        refuse(document, "alpha_pattern", (None,), "per-module alphas differ; peftlab's layer has one alpha")
        if method == "lokr":
            refuse(document, "decompose_both", (False, None), "peftlab's LoKr keeps W1 whole")
            refuse(document, "decompose_factor", (-1, None), "peftlab's LoKr factors each side near-square")
        options = {"rank": peft_field(document, "r", int), "alpha": peft_field(document, "alpha", float),
                   "target_modules": exact_patterns(sorted(grouped))}
        return get_method(method).config_class.from_options(options), grouped

    return convert


register_converter(PeftConverter("loha", "LOHA", LOHA, LOHA, _to_peft, _from_peft("loha")))
register_converter(PeftConverter("lokr", "LOKR", LOKR, LOKR, _to_peft, _from_peft("lokr")))
