"""Adapters that look fine and are not: weights that are not numbers, and deltas that are exactly zero.

An adapter whose every layer adds exactly nothing (LoRA's ``B`` still zero, an adapter saved before
training) loads and merges without complaint elsewhere; here it warns. Each adapter layer is tested on
its own with a random input, so the check covers every :class:`AdapterLayer` without knowing its math.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from peftlab.core.layers import AdapterLayer, AdapterModule
from peftlab.core.state import peft_state


class InertAdapterWarning(UserWarning):
    """The adapter changes nothing: its delta is exactly zero."""


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding a NaN or an infinity."""
    return [
        name for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training


@torch.no_grad()
def layer_is_inert(layer: AdapterLayer, seed: int = 0) -> bool:
    """True when ``layer`` adds exactly nothing to its base layer's output on a random input."""
    known = layer.known_inert()
    if known is not None:
        return known
    weight = next(layer.base_layer.parameters())
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, layer.in_features, generator=generator).to(device=weight.device, dtype=dtype)
    with _eval_mode(layer):
        return torch.equal(layer(x), layer.base_layer(x))


def adapter_is_inert(model: nn.Module) -> bool:
    """True when the applied method's whole effect is provably zero.

    Only adapter layers can be checked; an adapter that also trains base parameters (modules_to_save,
    BitFit) or adds other modules (prompts) is never called inert.
    """
    state = peft_state(model)
    if state is None or state.injection.selected or state.injection.created:
        return False
    modules = [m for m in model.modules() if isinstance(m, AdapterModule) and m.adapter_name == state.name]
    layers = [m for m in modules if isinstance(m, AdapterLayer)]
    if not layers or len(layers) != len(modules) or any(layer.merged for layer in layers):
        return False
    return all(layer_is_inert(layer) for layer in layers)


def warn_if_inert(model: nn.Module, source: str, action: str = "loaded") -> bool:
    """Warn (and return True) when the adapter on ``model`` changes nothing."""
    if not adapter_is_inert(model):
        return False
    layers = sum(isinstance(m, AdapterLayer) for m in model.modules())
    warnings.warn(
        f"the adapter {action} from {source} changes nothing: all {layers} of its layers add an exactly "
        f"zero delta (e.g. LoRA's B is still zero). Was it saved before training, or did training not "
        f"update it (learning rate 0, frozen by mistake)?",
        InertAdapterWarning,
        stacklevel=3,
    )
    return True
