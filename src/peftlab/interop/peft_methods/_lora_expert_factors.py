"""LoRA on parameters (``target_parameters``) <-> peft's ``ParamWrapper`` layout.

peftlab keeps one ``(A_e, B_e)`` per expert: ``A`` (E, r, in), ``B`` (E, out, r). peft keeps two linear
weights: ``lora_A.weight`` (E r, in) whose rows are the experts' ``A_e`` one after another, and
``lora_B.weight`` (out, r E) whose column ``k E + e`` is column ``k`` of ``B_e`` (peft reshapes it to
(out, r, E)). Module names agree: peft nests one wrapper per parameter as peftlab does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from peftlab.core.serialization import AdapterFileError
from peftlab.interop.peft_converters import Grouped, UnsupportedPeftAdapter

_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_]|\\\.|\.)+")


def expert_factors_to_peft(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    experts, rank, in_features = a.shape
    return {"lora_A.weight": a.reshape(experts * rank, in_features),
            "lora_B.weight": b.permute(1, 2, 0).reshape(b.shape[1], rank * experts)}


def expert_factors_from_peft(module: str, a: torch.Tensor, b: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
    if a.shape[0] % rank or b.shape[1] != a.shape[0]:
        raise AdapterFileError(f"peft adapter parameter module {module}: lora_A {tuple(a.shape)} / lora_B "
                               f"{tuple(b.shape)} are not r={rank} rows and columns per expert")
    experts = a.shape[0] // rank
    return {"lora_A": a.reshape(experts, rank, a.shape[1]),
            "lora_B": b.reshape(b.shape[0], rank, experts).permute(2, 0, 1).contiguous()}


def peft_parameter_names(patterns: Sequence[str]) -> list[str]:
    """peftlab's ``target_parameters`` patterns as peft's names (peft matches a name or a dotted suffix, no
    regular expressions): plain names pass, ``\\.`` unescaped; anything else is refused."""
    names = []
    for pattern in patterns:
        if not _PLAIN_NAME.fullmatch(pattern):
            raise UnsupportedPeftAdapter(
                f"target_parameters pattern {pattern!r} is a regular expression; peft matches parameter names "
                f"only. List the names (e.g. 'experts.gate_up_proj', 'experts.down_proj') to export it"
            )
        names.append(pattern.replace("\\.", "."))
    return names


def _peft_matches(name: str, targets: Any) -> bool:
    """peft's ``target_modules`` rule: a string is a regex over the whole name, a list holds names or suffixes."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return targets != "all-linear" and re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in targets)


def split_parameter_modules(document: dict[str, Any], grouped: Grouped, rank: int) -> tuple[list[str], set[str]]:
    """A peft file's modules: (linear layers, parameter wrappers). Without ``target_parameters`` all are linear;
    with it, a wrapper is a nested ``...base_layer`` or a module that ``target_modules`` does not name (for
    ``all-linear``: one whose ``lora_A`` is not ``r`` rows)."""
    if not document.get("target_parameters"):
        return sorted(grouped), set()
    targets = document.get("target_modules")
    parameters = set()
    for module, weights in grouped.items():
        if module.endswith(".base_layer") or module == "base_layer":
            parameters.add(module)
        elif targets == "all-linear":
            if weights.get("lora_A.weight") is not None and weights["lora_A.weight"].shape[0] != rank:
                parameters.add(module)
        elif not _peft_matches(module, targets):
            parameters.add(module)
    return sorted(set(grouped) - parameters), parameters
