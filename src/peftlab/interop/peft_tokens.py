"""Trainable token rows (``token_indices``, :mod:`peftlab.core.token_rows`) in HF peft's format.

peftlab saves ``<embedding>.token_rows`` (``k x d``) and ``<embedding>.token_indices``. peft saves the rows as
``<embedding>.trainable_tokens_delta`` for its ``TRAINABLE_TOKENS`` method (with a copy per module that shares
the embedding's weight: a tied head, T5's encoder and decoder embeddings) and, beside LoRA
(``trainable_token_indices``), as ``<embedding>.token_adapter.trainable_tokens_delta``. In both the "delta" is
the rows' values, not a difference, so the tensors carry over unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from peftlab.interop.peft_converters import UnsupportedPeftAdapter

ROWS, INDICES = "token_rows", "token_indices"
PEFT_ROWS = "trainable_tokens_delta"
BESIDE_LORA = f"token_adapter.{PEFT_ROWS}"
# peft configs with a trainable_token_indices field (DoRA and QLoRA export as LORA)
TOKENS_BESIDE = ("LORA",)


def split_token_rows(tensors: dict[str, torch.Tensor]) -> tuple[tuple[str, torch.Tensor, list[int]] | None,
                                                                   dict[str, torch.Tensor]]:
    """``(embedding name, rows, indices)`` of a peftlab adapter's token rows (None without), and its other tensors."""
    owners = [name[: -len(ROWS) - 1] for name in tensors if name.endswith("." + ROWS)]
    if not owners:
        return None, dict(tensors)
    owner = owners[0]
    rest = {n: t for n, t in tensors.items() if n not in (f"{owner}.{ROWS}", f"{owner}.{INDICES}")}
    return (owner, tensors[f"{owner}.{ROWS}"], tensors[f"{owner}.{INDICES}"].tolist()), rest


def tokens_to_peft(peft_type: str, tokens: tuple[str, torch.Tensor, list[int]]) -> tuple[dict[str, Any],
                                                                                       dict[str, torch.Tensor]]:
    """The config fields and tensors (named without peft's prefix) of token rows beside a ``peft_type`` method."""
    if peft_type not in TOKENS_BESIDE:
        raise UnsupportedPeftAdapter(
            f"peft's {peft_type} config has no trainable_token_indices (only {', '.join(TOKENS_BESIDE)} does); "
            f"export the adapter without token_indices, or merge it (`peftlab merge`)"
        )
    owner, rows, indices = tokens
    return {"trainable_token_indices": {owner: indices}}, {f"{owner}.{BESIDE_LORA}": rows}


def tokens_from_peft(document: dict[str, Any], tensors: dict[str, torch.Tensor], suffix: str,
                     target: Any) -> tuple[list[int], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(indices, peftlab tensors, the other tensors)`` of peft's token rows saved under ``<module>.<suffix>``;
    ``target`` (peft's ``target_modules`` or ``trainable_token_indices`` keys) names the embedding, the
    other modules holding rows must be copies of it (tied to it)."""
    found = {name[: -len(suffix) - 1]: t for name, t in tensors.items() if name.endswith("." + suffix)}
    if not found:
        return [], {}, dict(tensors)
    owners = [module for module in found if _targeted(module, target)] or sorted(found)
    owner = owners[0]
    untied = [module for module, rows in found.items() if not torch.equal(rows, found[owner])]
    if untied:
        raise UnsupportedPeftAdapter(
            f"this peft adapter trains token rows of {', '.join(sorted(found))} separately; peftlab trains the input "
            f"embedding's rows ({owner}) and shares them with tied modules only"
        )
    indices = _indices(document, owner)
    rest = {n: t for n, t in tensors.items() if not n.endswith("." + suffix)}
    ours = {f"{owner}.{ROWS}": found[owner], f"{owner}.{INDICES}": torch.tensor(indices, dtype=torch.long)}
    return indices, ours, rest


def _targeted(module: str, target: Any) -> bool:
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    names = list(target or [])
    return any(module == name or module.endswith("." + name) for name in names)


def _indices(document: dict[str, Any], owner: str) -> list[int]:
    value = document.get("token_indices", document.get("trainable_token_indices"))
    if isinstance(value, dict):
        matching = [indices for module, indices in value.items() if _targeted(owner, [module])]
        if len(value) != 1 or not matching:
            raise UnsupportedPeftAdapter(f"trainable_token_indices for several modules ({', '.join(value)}); "
                                         f"peftlab trains the input embedding's rows only")
        value = matching[0]
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise UnsupportedPeftAdapter(f"token indices {value!r} are not a list of token ids")
    return value
