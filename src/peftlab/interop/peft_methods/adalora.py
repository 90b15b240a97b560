"""AdaLoRA <-> peft ``ADALORA``.

peftlab: ``y = W x + (alpha / r0) P diag(mask ⊙ λ) Q x``. peft: ``y = W x + lora_alpha / (ranknum + 1e-5)
lora_B diag(lora_E) lora_A x`` with ``lora_A = Q``, ``lora_B = P``, and ``ranknum = r0`` in every module,
pruned or not (peft keeps a pruned module's ranknum when it slices it, and does not save ranknum).

A pruned adapter travels as peft saves one: each module's tensors cut to its kept ranks, and
``rank_pattern`` (``"<module>.lora_E"`` -> one bool per initial rank) in the config. Exported:
``lora_E = mask ⊙ λ``; imported: ``λ`` scaled by the ratio of the two scales, and the kept ranks put
back at their ``rank_pattern`` positions (the first ones when there is none) among ``r0``, the rest masked.
"""

from __future__ import annotations

from typing import Any

import torch

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method
from peftlab.core.serialization import CONFIG_NAME, AdapterFileError
from peftlab.interop.peft_converters import (
    CONV1D_MODEL_TYPES,
    Grouped,
    PeftConverter,
    exact_patterns,
    peft_field,
    register_converter,
)

EPSILON = 1e-5  # peft adds it to ranknum


def _to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    pruned = any(not bool(weights["rank_mask"].all()) for weights in grouped.values())
    out: Grouped = {}
    pattern: dict[str, list[bool]] = {}
    for module, weights in grouped.items():
        mask = weights["rank_mask"].bool()
        kept = mask if pruned else torch.ones_like(mask)
        values = weights["svd_lambda"] * mask.to(weights["svd_lambda"].dtype)
        out[module] = {"lora_A": weights["svd_Q"][kept], "lora_B": weights["svd_P"][:, kept],
                       "lora_E": values[kept, None],
                       "ranknum": torch.tensor([float(config.init_rank)], dtype=values.dtype)}
        pattern[f"{module}.lora_E"] = mask.tolist()
    document = {
        "init_r": config.init_rank, "target_r": config.target_rank,
        "lora_alpha": config.alpha * (config.init_rank + EPSILON) / config.init_rank,
        "lora_dropout": config.dropout, "target_modules": sorted(grouped),
        "total_step": config.total_steps, "tinit": config.t_init, "tfinal": config.t_final,
        "deltaT": config.delta_t, "beta1": config.beta1, "beta2": config.beta2,
        "orth_reg_weight": config.orth_reg_weight, "rank_pattern": pattern if pruned else None, "bias": "none",
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
    patterns = _rank_patterns(document)
    ours: Grouped = {}
    for module, weights in grouped.items():
        a, b, e = weights["lora_A"], weights["lora_B"], weights["lora_E"].reshape(-1)
        ranknum = float(weights["ranknum"].reshape(-1)[0]) if "ranknum" in weights else float(init_rank)
        scale = (alpha / (ranknum + EPSILON)) / (config.alpha / init_rank)
        mask = _kept_ranks(patterns.get(module), a.shape[0], init_rank)
        q, p, values = a.new_zeros(init_rank, a.shape[1]), b.new_zeros(b.shape[0], init_rank), e.new_zeros(init_rank)
        q[mask], p[:, mask], values[mask] = a, b, e * scale
        ours[module] = {"svd_Q": q, "svd_P": p, "svd_lambda": values, "rank_mask": mask}
    return config, ours


def _rank_patterns(document: dict[str, Any]) -> dict[str, list[Any]]:
    """peft's ``rank_pattern`` by module name (its keys name the ``lora_E`` tensor, maybe with the adapter's name)."""
    pattern = document.get("rank_pattern")
    if not isinstance(pattern, dict):
        return {}
    return {key.split(".lora_E")[0]: value for key, value in pattern.items() if isinstance(value, list)}


def _kept_ranks(pattern: list[Any] | None, kept: int, init_rank: int) -> torch.Tensor:
    """Which of the ``init_rank`` ranks the ``kept`` saved ones are: ``pattern``'s, if it agrees, else the first."""
    if pattern is not None and len(pattern) == init_rank and sum(map(bool, pattern)) == kept:
        return torch.tensor([bool(v) for v in pattern], dtype=torch.bool)
    if kept > init_rank:
        raise AdapterFileError(f"{CONFIG_NAME}: a module holds {kept} ranks, more than init_r={init_rank}")
    return torch.arange(init_rank) < kept


register_converter(PeftConverter(
    method="adalora", peft_type="ADALORA",
    weights=("svd_P", "svd_Q", "svd_lambda", "rank_mask"),
    peft_weights=("lora_A", "lora_B", "lora_E", "ranknum"),
    to_peft=_to_peft, from_peft=_from_peft,
))
