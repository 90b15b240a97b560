"""LoRA and DoRA <-> peft ``LORA`` (``use_dora`` marks DoRA; ``use_rslora`` the rank-stabilised scaling).

peft names: ``<module>.lora_A.weight`` (r x in), ``<module>.lora_B.weight`` (out x r), DoRA's magnitude
``<module>.lora_magnitude_vector`` (out). A residual-init LoRA (PiSSA, OLoRA) changed its frozen
base, so it is exported as the plain rank-2r update on the untouched base, ``s [B, -B0] [A; A0]``.
A wrapped parameter (``target_parameters``, E experts) keeps ``A`` (E, r, in) and ``B`` (E, out, r); peft's
``ParamWrapper`` stacks them as ``lora_A.weight`` (E r, in), expert-major rows, and ``lora_B.weight``
(out, r E), column ``k E + e`` for expert ``e``'s ``k``-th (``_lora_expert_factors.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.core.serialization import AdapterFileError
from peftlab.interop.peft_converters import (
    CONV1D_MODEL_TYPES,
    Grouped,
    PeftConverter,
    UnsupportedPeftAdapter,
    exact_patterns,
    peft_field,
    refuse,
    register_converter,
)
from peftlab.interop.peft_methods._lora_expert_factors import (
    expert_factors_from_peft,
    expert_factors_to_peft,
    peft_parameter_names,
    split_parameter_modules,
)

RESIDUAL_INITS = ("pissa", "olora")
PEFT_INITS = (True, False, "gaussian")  # any other init left the base weights changed


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    return _to_peft_as(config, grouped, base, dora=config.method == "dora")


def _to_peft_as(config: MethodConfig, grouped: Grouped, base: dict[str, Any], dora: bool) -> tuple[dict[str, Any], Grouped]:
    if getattr(config, "init", None) == "loftq":
        raise UnsupportedPeftAdapter(
            "a LoftQ-initialised qlora adapter was trained over LoftQ's own quantized base, which peft would rebuild "
            "differently (its loftq_init quantizes without double quantisation, on CUDA); export the merged model "
            "instead (`peftlab merge`, or peftlab.interop.merged)")
    rank = config.rank
    scaling = getattr(config, "scaling", config.alpha / config.rank)
    residual = getattr(config, "init", "kaiming") in RESIDUAL_INITS
    out: Grouped = {}
    parameter_modules = sorted(module for module, weights in grouped.items() if weights["lora_A"].dim() == 3)
    for module, weights in grouped.items():
        a, b = weights["lora_A"], weights["lora_B"]
        if a.dim() == 3:
            out[module] = expert_factors_to_peft(a, b)
            continue
        if residual:
            a, b = torch.cat([a, weights["lora_A_init"]], 0), torch.cat([b, -weights["lora_B_init"]], 1)
        out[module] = {"lora_A.weight": a, "lora_B.weight": b}
        if "lora_magnitude" in weights:
            out[module]["lora_magnitude_vector"] = weights["lora_magnitude"]
    peft_rank = 2 * rank if residual else rank
    rslora = getattr(config, "scaling_rule", "lora") == "rslora" and not residual
    document = {
        "r": peft_rank,
        "lora_alpha": scaling * (math.sqrt(peft_rank) if rslora else peft_rank),
        "lora_dropout": config.dropout,
        "target_modules": sorted(set(grouped) - set(parameter_modules)),
        "fan_in_fan_out": base.get("model_type") in CONV1D_MODEL_TYPES,
        "bias": "none",
        "use_rslora": rslora,
        "use_dora": dora,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if parameter_modules:
        document["target_parameters"] = peft_parameter_names(getattr(config, "target_parameters", ()))
    return document, out


def _from_peft(method: str):
    def convert(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
        rank = peft_field(document, "r", int)
        alpha = peft_field(document, "lora_alpha", float)
        refuse(document, "bias", ("none", None), "peftlab's LoRA trains no bias terms")
        refuse(document, "lora_bias", (False, None), "peftlab's LoRA has no bias on B")
        refuse(document, "rank_pattern", (None,), "per-module ranks differ; peftlab's LoRA has one rank")
        refuse(document, "alpha_pattern", (None,), "per-module alphas differ; peftlab's LoRA has one alpha")
        refuse(document, "use_qalora", (False, None), "QA-LoRA pools inputs; peftlab has no such layer")
        refuse(document, "init_lora_weights", PEFT_INITS,
               "that initialisation changed the base weights the adapter expects; convert it first with "
               "peft's save_pretrained(..., path_initial_model_for_weight_conversion=...)")
        if rank <= 0:
            raise AdapterFileError(f"adapter_config.json: field 'r' must be positive, not {rank}")
        config_class = get_method(method).config_class
        fields = {f.name for f in dataclasses.fields(config_class)}
        linear, parameters = split_parameter_modules(document, grouped, rank)
        options: dict[str, Any] = {
            "rank": rank,
            "dropout": float(peft_field(document, "lora_dropout", float, 0.0)),
            "target_modules": exact_patterns(linear),
        }
        if parameters:
            if method != "lora":
                raise AdapterFileError("peft adapter: target_parameters with use_dora; peft's ParamWrapper has no DoRA")
            options["target_parameters"] = exact_patterns(list(document["target_parameters"]))
        if peft_field(document, "use_rslora", bool, False):
            if "scaling_rule" in fields:
                options.update(alpha=alpha, scaling_rule="rslora")
            else:
                options["alpha"] = alpha * math.sqrt(rank)  # alpha / r == peft's alpha / sqrt(r)
        else:
            options["alpha"] = alpha
        ours: Grouped = {}
        for module, weights in grouped.items():
            if "lora_A.weight" not in weights or "lora_B.weight" not in weights:
                raise AdapterFileError(f"peft adapter module {module} lacks lora_A or lora_B")
            a, b = weights["lora_A.weight"], weights["lora_B.weight"]
            if module in parameters:
                ours[module] = expert_factors_from_peft(module, a, b, rank)
                continue
            if a.shape[0] != rank or b.shape[1] != rank:
                raise AdapterFileError(f"peft adapter module {module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                                 f"do not have rank r={rank} from adapter_config.json")
            ours[module] = {"lora_A": a, "lora_B": b}
            if method == "dora":
                magnitude = weights.get("lora_magnitude_vector", weights.get("lora_magnitude_vector.weight"))
                if magnitude is None:
                    raise AdapterFileError(f"peft DoRA adapter module {module} lacks lora_magnitude_vector")
                ours[module]["lora_magnitude"] = magnitude.reshape(-1)
        return config_class.from_options(options), ours

    return convert


LORA_WEIGHTS = ("lora_A", "lora_B", "lora_A_init", "lora_B_init")
PEFT_LORA_WEIGHTS = ("lora_A.weight", "lora_B.weight")

register_converter(PeftConverter(
    method="lora",
    peft_type="LORA",
    weights=LORA_WEIGHTS,
    peft_weights=PEFT_LORA_WEIGHTS,
    to_peft=_to_peft,
    from_peft=_from_peft("lora"),
    claims=lambda document: not document.get("use_dora"),
))

register_converter(PeftConverter(
    method="dora",
    peft_type="LORA",
    weights=(*LORA_WEIGHTS, "lora_magnitude"),
    peft_weights=(*PEFT_LORA_WEIGHTS, "lora_magnitude_vector.weight", "lora_magnitude_vector"),
    to_peft=_to_peft,
    from_peft=_from_peft("dora"),
    claims=lambda document: bool(document.get("use_dora")),
))


def _export_only(method: str):
    def convert(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
        raise AssertionError(f"peft LORA adapters import as lora or dora, never as {method}")

    return convert


# QLoRA / QDoRA: the adapter is LoRA (DoRA) weights over a 4-bit base; peft loads them as LORA onto a base
# quantized the same way (or onto the float base). A peft LORA folder always imports as plain lora/dora.
for _method, _dora in (("qlora", False), ("qdora", True)):
    register_converter(PeftConverter(
        method=_method,
        peft_type="LORA",
        weights=(*LORA_WEIGHTS, "lora_magnitude") if _dora else LORA_WEIGHTS,
        peft_weights=PEFT_LORA_WEIGHTS,
        to_peft=lambda config, grouped, base, _d=_dora: _to_peft_as(config, grouped, base, dora=_d),
        from_peft=_export_only(_method),
        claims=lambda document: False,
    ))
