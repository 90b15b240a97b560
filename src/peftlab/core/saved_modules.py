"""Modules trained in full beside a method (``modules_to_save``, e.g. a new classification head), as HF peft
keeps them: the frozen module stays, and the adapter trains a copy of it.

So each named adapter has its own head, the bare base keeps its own, and a mixed batch gives each row
its adapter's head. The copy's parameters are named as the module's own (``classifier.weight``), so a
saved adapter reads as before and as peft's ``modules_to_save`` tensors do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule
from peftlab.core.routing import current_rows, route
from peftlab.core.targeting import find_modules, replace_module


class SavedModule(AdapterModule):
    """``base_layer`` (frozen) and ``trained``, its copy that the adapter trains; the active one runs."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer  # the module, or another adapter's SavedModule of it
        original = base_layer
        while isinstance(original, SavedModule):
            original = original.base_layer
        self.trained = copy.deepcopy(original)
        self.merged = False  # merging keeps the trained copy in use; unload puts it in the module's place

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        yield from self.trained.named_parameters()  # named as the module's own: "weight", "dense.weight"

    def forward(self, x, *args, **kwargs):
        if current_rows() is not None:
            return route(self.adapter_name, x, lambda rows: self.trained(rows, *args, **kwargs),
                         lambda rows: self.base_layer(rows, *args, **kwargs))
        return (self.trained if self.active or self.merged else self.base_layer)(x, *args, **kwargs)

    def __getattr__(self, name: str):
        """Model code reads a head's attributes (``classifier.weight``, ``embed_tokens.num_embeddings``): they
        are those of the module in use."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_layer", "trained"):
                raise
            return getattr(self.trained if self.active or self.merged else self.base_layer, name)

    def merge(self) -> None:
        self.merged = True

    def unmerge(self) -> None:
        self.merged = False


def wrap_saved_modules(model: nn.Module, patterns: Sequence[str], trained_in_place: Sequence[str] = ()) -> list[str]:
    """Wrap each module matched by ``patterns`` (the outermost of nested matches) in a :class:`SavedModule`.

    A module some of whose parameters the method itself trains in place (``trained_in_place``: full
    fine-tuning, BitFit's biases) is left unwrapped and trained in place whole; returns its parameters' names."""
    chosen: list[str] = []
    in_place_modules: list[str] = []
    in_place = set(trained_in_place)
    for name, module in find_modules(model, patterns, types=(nn.Module,), role="modules_to_save pattern"):
        if any(name.startswith(outer + ".") for outer in chosen):
            continue
        own = [f"{name}.{parameter}" for parameter, _ in module.named_parameters()]
        if any(parameter in in_place for parameter in own):  # the method trains it in place (BitFit's bias):
            in_place_modules.append(name)  # the whole module trains in place, as the method's own parameters
            continue
        inside = [m for m in module.modules() if isinstance(m, AdapterModule) and not isinstance(m, SavedModule)]
        if inside:
            raise UserError(
                f"modules_to_save module {name!r} is (or holds) a layer the method adapts; train it in full or "
                f"adapt it, not both (leave it out of target_modules or of modules_to_save)"
            )
        chosen.append(name)
    for name in chosen:
        replace_module(model, name, SavedModule(model.get_submodule(name)))
    return [f"{name}.{parameter}" for name in in_place_modules
            for parameter, _ in model.get_submodule(name).named_parameters()]
