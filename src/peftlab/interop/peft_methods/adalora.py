"""AdaLoRA <-> peft ``ADALORA``.

peftlab: ``y = W x + (alpha / r0) P diag(mask ⊙ λ) Q x``. peft: ``y = W x + lora_alpha / (ranknum + 1e-5)
lora_B diag(lora_E) lora_A x`` with ``lora_A = Q``, ``lora_B = P``. Exported: ``lora_E = mask ⊙ λ`` and
``ranknum = r0``; imported: each module's own scale (peft prunes ranks, so ``ranknum`` varies) is folded
into ``λ``, and a pruned module is padded back to ``r0`` with masked-off ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.interop.peft_format import (
    CONV1D_MODEL_TYPES,
    Grouped,
    PeftConverter,
    exact_patterns,
    peft_field,
    register_converter,
)

EPSILON = 1e-5  # peft adds it to ranknum


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    out: Grouped = {}
    for module, weights in grouped.items():
        values = weights["svd_lambda"] * weights["rank_mask"].to(weights["svd_lambda"].dtype)
        out[module] = {"lora_A": weights["svd_Q"], "lora_B": weights["svd_P"], "lora_E": values[:, None],
                       "ranknum": torch.tensor([float(config.init_rank)], dtype=values.dtype)}
    document = {
        "init_r": config.init_rank, "target_r": config.target_rank,
        "lora_alpha": config.alpha * (config.init_rank + EPSILON) / config.init_rank,
        "lora_dropout": config.dropout, "target_modules": sorted(grouped),
        "total_step": config.total_steps, "tinit": config.t_init, "tfinal": config.t_final,
        "deltaT": config.delta_t, "beta1": config.beta1, "beta2": config.beta2,
        "orth_reg_weight": config.orth_reg_weight, "rank_pattern": None, "bias": "none",
        "fan_in_fan_out": base.get("model_type") in CONV1D_MODEL_TYPES, "init_lora_weights": True,
    }
    return document, out


def _from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    init_rank = peft_field(document, "init_r", int)
    alpha = peft_field(document, "lora_alpha", float)
    total = peft_field(document, "total_step", int, 0) or 1
    t_init, t_final = peft_field(document, "tinit", int, 0), peft_field(document, "tfinal", int, 0)
    config = get_method("adalora").config_class.from_options({
        "init_rank": init_rank, "target_rank": min(peft_field(document, "target_r", int, init_rank), init_rank),
        "alpha": alpha, "dropout": peft_field(document, "lora_dropout", float, 0.0),
        "target_modules": exact_patterns(sorted(grouped)), "total_steps": max(total, t_init + t_final + 1),
        "t_init": t_init, "t_final": t_final, "delta_t": peft_field(document, "deltaT", int, 1),
        "beta1": peft_field(document, "beta1", float, 0.85), "beta2": peft_field(document, "beta2", float, 0.85),
        "orth_reg_weight": peft_field(document, "orth_reg_weight", float, 0.1),
    })
    ours: Grouped = {}
    for module, weights in grouped.items():
        a, b, e = weights["lora_A"], weights["lora_B"], weights["lora_E"].reshape(-1)
        kept = a.shape[0]
        ranknum = float(weights["ranknum"].reshape(-1)[0]) if "ranknum" in weights else float(kept)
        scale = (alpha / (ranknum + EPSILON)) / (config.alpha / init_rank)
        pad = init_rank - kept
        ours[module] = {
            "svd_Q": torch.cat([a, a.new_zeros(pad, a.shape[1])]),
            "svd_P": torch.cat([b, b.new_zeros(b.shape[0], pad)], 1),
            "svd_lambda": torch.cat([e * scale, e.new_zeros(pad)]),
            "rank_mask": torch.arange(init_rank) < kept,
        }
    return config, ours


register_converter(PeftConverter(
    method="adalora", peft_type="ADALORA",
    weights=("svd_P", "svd_Q", "svd_lambda", "rank_mask"),
    peft_weights=("lora_A", "lora_B", "lora_E", "ranknum"),
    to_peft=_to_peft, from_peft=_from_peft,
))
