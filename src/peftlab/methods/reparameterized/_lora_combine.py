"""Combine named LoRA adapters into a new one (HF peft's ``add_weighted_adapter``).

Each source adapter ``i`` with weight ``w_i`` changes a layer by ``ΔW_i = s_i B_i A_i``. The combinations:

* ``cat``: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1, B_2, ...]``, rank ``Σ r_i``: exactly
  ``ΔW = Σ w_i ΔW_i``.
* ``svd``: ``Σ w_i ΔW_i`` truncated to ``rank`` singular values (exact when ``rank >= Σ r_i``).
* ``linear``: peft's rule for adapters of one rank, ``A = Σ sqrt(w_i) s_i A_i``, ``B = Σ sqrt(w_i) B_i``. It is
  not the weighted sum of the deltas (the cross terms ``B_i A_j`` stay); the report says by how much.
* ``ties`` (Yadav et al. 2023, arXiv 2306.01708): keep each ``w_i ΔW_i``'s largest ``density`` share of
  entries, elect each entry's sign by the sum, average the kept entries that agree with it.
* ``dare_linear`` / ``dare_ties`` (Yu et al. 2023, arXiv 2311.03099): drop each entry of ``ΔW_i`` with
  probability ``1 - density`` and rescale the rest by ``1 / density`` (seeded), then sum / TIES.

The last four are factored back to ``rank`` by SVD. The new adapter is checked on a probe input against the
sources run together with their scalings multiplied by the weights, which is the weighted sum itself; a
combination that should be exact and is not is removed again with an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.adapters import delete_adapter, list_adapters, only_adapter, set_adapter
from peftlab.core.errors import UserError
from peftlab.core.injection import apply_config
from peftlab.core.probe import probe_output
from peftlab.core.state import active_adapters, adapter_modules, adapter_states
from peftlab.methods.reparameterized.lora import LoRAConfig, LoRALinear

COMBINATIONS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties")


class CombineError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class CombineReport:
    name: str
    combination: str
    rank: int
    layers: int
    max_abs_difference: float  # the new adapter's outputs against the weighted sum's, on the probe
    exact: bool  # whether the combination is the weighted sum by construction (then checked to tolerance)


def add_weighted_adapter(model: nn.Module, weights: Mapping[str, float], name: str, combination: str = "svd", *,
                         rank: int | None = None, density: float = 0.5, seed: int = 0,
                         tolerance: float = 1e-4) -> CombineReport:
    """Add adapter ``name``, the ``weights``-weighted combination of LoRA adapters on ``model`` (inactive, as
    every added adapter is); return how it compares with the exact weighted sum."""
    sources = _sources(model, weights, combination, density)
    factors = {path: _combine([(w, layers.get(path)) for w, layers in sources.values()], combination, rank,
                              density, torch.Generator().manual_seed(seed))
               for path in _union(sources)}
    new_rank = next(iter(factors.values()))[0].shape[0]
    config = LoRAConfig(rank=new_rank, alpha=float(new_rank), target_modules=tuple(map(re.escape, factors)))
    apply_config(model, config, name)
    with torch.no_grad():
        for path, layer in adapter_modules(model, name):
            layer.lora_A.copy_(factors[path][0])
            layer.lora_B.copy_(factors[path][1])
    exact = combination == "cat" or (combination == "svd" and new_rank >= sum(_ranks(sources)))
    difference = _difference_from_weighted_sum(model, name, weights)
    if exact and not difference <= tolerance:
        delete_adapter(model, name)
        raise CombineError(f"the {combination} combination differs from the weighted sum by {difference:.3g} "
                           f"(> tolerance {tolerance:g}); it was removed again")
    return CombineReport(name, combination, new_rank, len(factors), difference, exact)


def _sources(model: nn.Module, weights: Mapping[str, float], combination: str,
             density: float) -> dict[str, tuple[float, dict[str, LoRALinear]]]:
    if combination not in COMBINATIONS:
        raise CombineError(f"combination {combination!r} is not one of {', '.join(COMBINATIONS)}")
    if not weights:
        raise CombineError("weights is empty: give {adapter name: weight} for the adapters to combine")
    unknown = [n for n in weights if n not in list_adapters(model)]
    if unknown:
        raise CombineError(f"no adapter named {', '.join(map(repr, unknown))}; this model has "
                           f"{', '.join(map(repr, list_adapters(model))) or 'none'}")
    if not 0.0 < density <= 1.0:
        raise CombineError(f"density {density} must be in (0, 1]: the share of each delta's entries kept")
    sources = {}
    for adapter, weight in weights.items():
        layers = dict(adapter_modules(model, adapter))
        if adapter_states(model)[adapter].config.token_indices:
            raise CombineError(f"adapter {adapter!r} trains token rows (token_indices), which add_weighted_adapter "
                               f"does not combine; combine LoRA adapters without them")
        if adapter_states(model)[adapter].method != "lora" or any(type(m) is not LoRALinear for m in layers.values()):
            raise CombineError(f"adapter {adapter!r} is {adapter_states(model)[adapter].method!r}; "
                               f"add_weighted_adapter combines plain LoRA adapters of linear layers (no target_parameters)")
        sources[adapter] = (float(weight), layers)
    if combination == "linear" and len(set(_ranks(sources))) > 1:
        raise CombineError(f"'linear' adds the factors themselves, so it needs adapters of one rank (got ranks "
                           f"{sorted(set(_ranks(sources)))}); use 'cat' (exact) or 'svd'")
    return sources


def _ranks(sources: dict[str, tuple[float, dict[str, LoRALinear]]]) -> list[int]:
    return [next(iter(layers.values())).lora_A.shape[0] for _, layers in sources.values()]


def _union(sources: dict[str, tuple[float, dict[str, LoRALinear]]]) -> list[str]:
    return list(dict.fromkeys(path for _, layers in sources.values() for path in layers))


@torch.no_grad()
def _combine(parts: list[tuple[float, LoRALinear | None]], combination: str, rank: int | None, density: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of the new adapter's layer (scaling 1) from ``(weight, source layer or None)``."""
    present = [(w, layer) for w, layer in parts if layer is not None]
    if combination == "cat":
        return (torch.cat([w * layer.scaling * layer.lora_A for w, layer in present]),
                torch.cat([layer.lora_B for _, layer in present], dim=1))
    if combination == "linear":
        return (sum(w ** 0.5 * layer.scaling * layer.lora_A for w, layer in present),
                sum(w ** 0.5 * layer.lora_B for w, layer in present))
    deltas = [w * layer.delta_weight().float() for w, layer in present]
    if combination.startswith("dare"):
        deltas = [d * (torch.rand(d.shape, generator=generator) < density).to(d.dtype) / density for d in deltas]
    if combination.endswith("ties"):
        merged = _ties(deltas, density if combination == "ties" else 1.0)
    else:
        merged = sum(deltas)
    return _factor(merged, rank or max(layer.lora_A.shape[0] for _, layer in present), present[0][1].lora_A.dtype)


def _ties(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    kept = [_keep_largest(d, density) for d in deltas]
    stacked = torch.stack(kept)
    sign = torch.sign(stacked.sum(dim=0))
    agrees = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agrees).sum(dim=0) / agrees.sum(dim=0).clamp(min=1)


def _keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    keep = max(1, int(round(density * delta.numel())))
    threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
    return delta * (delta.abs() >= threshold)


def _factor(delta: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = min(rank, s.shape[0])
    return vh[:rank].to(dtype), (u[:, :rank] * s[:rank]).to(dtype)


def _difference_from_weighted_sum(model: nn.Module, name: str, weights: Mapping[str, float]) -> float:
    """Largest output difference on the probe: the new adapter alone against the sources together, each
    source's scaling multiplied by its weight (stacked LoRA layers add their deltas)."""
    before = active_adapters(model)
    with only_adapter(model, name):
        combined = probe_output(model)
    layers = [(layer, layer.scaling) for adapter, weight in weights.items()
              for _, layer in adapter_modules(model, adapter)]
    scale = {id(layer): weights[layer.adapter_name] for layer, _ in layers}
    try:
        for layer, scaling in layers:
            layer.scaling = scaling * scale[id(layer)]
        set_adapter(model, list(weights))
        expected = probe_output(model)
    finally:
        for layer, scaling in layers:
            layer.scaling = scaling
        set_adapter(model, before)
    return (combined - expected).abs().max().item()
