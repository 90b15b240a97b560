"""Trainable token rows (``token_indices``, as HF peft's trainable tokens): chosen rows of the input
embedding train, e.g. the embeddings of special tokens just added to a tokenizer; every other row stays frozen.

Any method takes ``token_indices`` (:class:`~peftlab.core.config.MethodConfig`), and the ``trainable_tokens``
method is that alone. The adapter keeps its own copy of the rows (``token_rows``, ``(k, d)``, initialised from
the embedding) beside their indices, as ``modules_to_save`` keeps a trained copy of a module: the frozen
embedding is never written, so the frozen rows stay bit-identical whatever the optimizer does (weight
decay included), each named adapter has its own rows, and the saved adapter holds just ``k * d`` values.

    embedding:  e(t) = token_rows[slot(t)] if t in token_indices else E[t]
    tied head:  logits[..., token_indices] = h @ token_rows^T   (when the output head shares E, as GPT-2's)

Merging writes the rows into ``E`` (and so into a tied head); unmerging puts the frozen rows back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule
from peftlab.core.routing import current_rows, route


class TokenRowsError(UserError, ValueError):
    pass


def original(module: nn.Module) -> nn.Module:
    """The model's own embedding or head under any number of adapter wrappers."""
    while isinstance(module, AdapterModule) and isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


class TrainedTokens(AdapterModule):
    """Wraps the input embedding, or (``rows_of``: the embedding's wrapper, whose rows it reads) a module sharing
    its weight, an embedding or a tied output head: the active adapter's rows replace the frozen ones."""

    def __init__(self, base_layer: nn.Module, indices: Sequence[int], rows_of: TrainedTokens | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = original(base_layer).weight
        self._rows_of = [rows_of] if rows_of is not None else []  # a list: the owner is not a submodule here
        self.merged = False
        if rows_of is None:
            index = torch.tensor(list(indices), dtype=torch.long, device=weight.device)
            self.register_buffer("token_indices", index)
            self.token_rows = nn.Parameter(weight.detach()[index].clone())
            slots = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
            self.register_buffer("slots", slots.index_copy(0, index, torch.arange(len(index), device=weight.device)),
                                 persistent=False)
            self._frozen_rows: torch.Tensor | None = None

    @property
    def owner(self) -> TrainedTokens:
        return self._rows_of[0] if self._rows_of else self

    def adapter_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        if not self._rows_of:
            yield "token_indices", self.token_indices

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapted = self._embedding_forward if isinstance(original(self.base_layer), nn.Embedding) else self._head_forward
        if current_rows() is not None:
            return route(self.adapter_name, x, lambda rows: adapted(rows, *args, **kwargs),
                         lambda rows: self.base_layer(rows, *args, **kwargs))
        if not self.active or self.merged:
            return self.base_layer(x, *args, **kwargs)
        return adapted(x, *args, **kwargs)

    def _embedding_forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        output = self.base_layer(ids, *args, **kwargs)  # (B, T, d)
        slot = self.owner.slots[ids]  # (B, T): the row's place in token_rows, -1 for a frozen token
        rows = F.embedding(slot.clamp(min=0), self.owner.token_rows)
        scale = getattr(original(self.base_layer), "embed_scale", None)  # scaled embeddings (Gemma's)
        if scale is not None:
            rows = rows * scale
        return torch.where((slot >= 0).unsqueeze(-1), rows.to(output.dtype), output)

    def _head_forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        output = self.base_layer(hidden, *args, **kwargs)  # (..., V)
        owner, head = self.owner, original(self.base_layer)
        columns = F.linear(hidden, owner.token_rows.to(hidden.dtype))  # (..., k)
        if getattr(head, "bias", None) is not None:
            columns = columns + head.bias[owner.token_indices]
        return output.index_copy(-1, owner.token_indices, columns.to(output.dtype))

    def __getattr__(self, name: str):
        """Model code reads the embedding's attributes (``weight``, ``num_embeddings``, ``padding_idx``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "token_rows", "token_indices", "slots"):
                raise
            return getattr(self.base_layer, name)

    @torch.no_grad()
    def merge(self) -> None:
        """Write the rows into the embedding (a tied head shares it, so its wrapper only stops adding them)."""
        if not self.merged and not self._rows_of:
            weight = original(self.base_layer).weight
            self._frozen_rows = weight[self.token_indices].clone()
            weight.index_copy_(0, self.token_indices, self.token_rows.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged and not self._rows_of:
            original(self.base_layer).weight.index_copy_(0, self.token_indices, self._frozen_rows)
            self._frozen_rows = None
        self.merged = False

    def release_base(self) -> nn.Module:
        return self.base_layer


def wrap_token_rows(model: nn.Module, indices: Sequence[int], trained_in_place: Sequence[str] = ()) -> None:
    """Wrap ``model``'s input embedding in a :class:`TrainedTokens`, and every other module that shares its
    weight (a tied output head; T5's encoder and decoder ``embed_tokens``) in one that reads the same rows.
    ``trained_in_place``: the base parameters the method trains itself (full fine-tuning's)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is None or not isinstance(original(embedding), nn.Embedding):
        raise TokenRowsError(f"token_indices needs an input embedding (nn.Embedding); {type(model).__name__}'s is "
                             f"{type(embedding).__name__}")
    named = dict(model.named_parameters(remove_duplicate=False))
    if any(named.get(name) is original(embedding).weight for name in trained_in_place):
        raise TokenRowsError("token_indices: this method already trains the whole input embedding; leave "
                             "token_indices out")
    vocabulary = original(embedding).num_embeddings
    outside = [index for index in indices if index >= vocabulary]
    if outside:
        raise TokenRowsError(
            f"token index {outside[0]} is outside the vocabulary of {vocabulary} tokens (valid: 0 to {vocabulary - 1})"
            + (f"; also {outside[1:]}" if len(outside) > 1 else "")
            + ". Resize the embeddings first (model.resize_token_embeddings(len(tokenizer))) after adding tokens"
        )
    weight = original(embedding).weight
    sharing = {id(m): m for _, m in _outer_modules(model) if getattr(original(m), "weight", None) is weight}
    strange = [type(original(m)).__name__ for m in sharing.values()
               if not isinstance(original(m), (nn.Embedding, nn.Linear))]
    if strange:
        raise TokenRowsError(f"token_indices: the embedding's weight is also used by a {strange[0]}, which peftlab "
                             f"cannot give the trained rows")
    owner = TrainedTokens(embedding, indices)
    _replace_everywhere(model, embedding, owner)
    for module in sharing.values():
        if module is not embedding:
            _replace_everywhere(model, module, TrainedTokens(module, indices, rows_of=owner))


def _outer_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module of the base (an adapter wrapper, but nothing inside one), once per name it has."""
    for name, module in model.named_children():
        yield name, module
        if not isinstance(module, AdapterModule):
            yield from ((f"{name}.{inner}", m) for inner, m in _outer_modules(module))


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered (a module may be registered under several names)."""
    for name in [name for name, module in _outer_modules(model) if module is old]:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
