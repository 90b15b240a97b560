"""Merge and unmerge, with a numeric check on a probe input that refuses a merge that changes outputs.

Merging folds each adapter layer's delta into its frozen weight (exact for LoRA-like deltas and
(IA)³ scalings, impossible for bottleneck adapters with a nonlinearity or for soft prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.checks import warn_if_inert
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterLayer, AdapterModule
from peftlab.core.probe import probe_output
from peftlab.core.registry import get_method
from peftlab.core.saved_modules import SavedModule
from peftlab.core.state import peft_state, remove_adapter_records
from peftlab.core.targeting import replace_module
from peftlab.core.token_rows import TrainedTokens


class MergeError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class MergeReport:
    layers: int
    max_abs_difference: float
    tolerance: float


def _saved_modules(model: nn.Module, adapter_name: str) -> list[SavedModule | TrainedTokens]:
    """The wrappers that merge themselves: trained copies of modules (``modules_to_save``) and token rows."""
    return [module for module in model.modules()
            if isinstance(module, (SavedModule, TrainedTokens)) and module.adapter_name == adapter_name]


def _adapter_layers(model: nn.Module, adapter_name: str) -> list[AdapterLayer]:
    return [module for module in model.modules() if isinstance(module, AdapterLayer) and module.adapter_name == adapter_name]


def _require_mergeable(model: nn.Module) -> list[AdapterLayer]:
    state = peft_state(model)
    if state is None:
        raise MergeError("this model carries no peftlab method; nothing to merge")
    spec = get_method(state.method)
    layers = _adapter_layers(model, state.name)
    others = [m for m in model.modules() if isinstance(m, AdapterModule)
              and not isinstance(m, (AdapterLayer, SavedModule, TrainedTokens)) and m.adapter_name == state.name]
    if not spec.mergeable or others or any(not layer.mergeable for layer in layers):
        raise MergeError(
            f"{state.method!r} cannot be merged exactly into the base weights; keep the adapter unmerged "
            f"or use a mergeable method (see `peftlab methods`)"
        )
    return layers


def merge(model: nn.Module, *, tolerance: float = 1e-4, check: bool = True) -> MergeReport:
    """Fold the adapter into the base weights; undo and raise if outputs move by more than ``tolerance``.

    Warns (:class:`~peftlab.core.checks.InertAdapterWarning`) when the adapter's delta is exactly zero.
    A method's ``merge_note`` hook (:class:`~peftlab.core.registry.MethodHooks`) may explain a refusal and the
    tolerance to pass.
    """
    layers = _require_mergeable(model)
    warn_if_inert(model, "this model", action="merged")
    spec = get_method(peft_state(model).method)
    before = probe_output(model) if check else None
    for layer in [*layers, *_saved_modules(model, peft_state(model).name)]:
        layer.merge()
    difference = 0.0
    if before is not None:
        difference = (probe_output(model) - before).abs().max().item()
        if not difference <= tolerance:
            unmerge(model)
            note = spec.hooks.merge_note
            why = note(model, before) if note is not None else None
            raise MergeError(
                f"merge changed the outputs by {difference:.3g} (> tolerance {tolerance:g}); the merge was undone. "
                + (why or "Raise `tolerance` if this precision loss is acceptable (e.g. fp16 weights).")
            )
    return MergeReport(layers=len(layers), max_abs_difference=difference, tolerance=tolerance)


def unmerge(model: nn.Module) -> None:
    """Take the merged delta back out of the base weights (exact up to float rounding)."""
    for layer in [*_require_mergeable(model), *_saved_modules(model, peft_state(model).name)]:
        layer.unmerge()


@torch.no_grad()
def unload(model: nn.Module, *, merge_first: bool = True) -> nn.Module:
    """Return the plain base model: merge (when asked), then replace each wrapper by its base layer."""
    if merge_first:
        merge(model)
    wrapper_types = (AdapterLayer, SavedModule, TrainedTokens)
    while (found := next(((n, m) for n, m in model.named_modules() if isinstance(m, wrapper_types)), None)):
        name, layer = found
        if isinstance(layer, SavedModule):
            replace_module(model, name, layer.trained if layer.merged else layer.base_layer)
        elif isinstance(layer, TrainedTokens):
            replace_module(model, name, layer.base_layer)  # merged: the rows are in the embedding now
        else:
            replace_module(model, name, layer.base_layer if layer.merged else layer.release_base())
    remove_adapter_records(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
