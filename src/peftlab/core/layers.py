"""What every method adds to a model: modules that know their own trainable parameters.

An :class:`AdapterModule` is anything a method adds (a prompt encoder, a gate). An
:class:`AdapterLayer` wraps one frozen module (``base_layer``) and adds a delta to its output;
merging folds the delta into the frozen weight where that is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftlab.core.errors import UserError
from peftlab.core.routing import current_rows, route

OFFLOAD_ADVICE = (
    "Load the model without offloading (a device_map or max_memory that fits every layer on a device), or, for "
    "inference, apply the method to the loaded model first and offload it afterwards (accelerate.dispatch_model)"
)


class OffloadedWeightsError(UserError, ValueError):
    """Weights on the meta device (offloaded by ``device_map``): a method cannot be built on them."""


class AdapterModule(nn.Module):
    """Base of every module a method adds. The core finds adapters by walking modules, not names.

    ``adapter_name`` says which named adapter the module belongs to and ``active`` whether that adapter is
    in use (:mod:`peftlab.core.adapters` sets both); an inactive layer passes its input to the base unchanged.
    """

    adapter_name: str = "default"
    active: bool = True

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This module's own trainable parameters, named relative to it.

        Skips the wrapped ``base_layer`` and nested adapter modules (those report their own).
        """
        yield from _own_parameters(self, prefix="")

    def adapter_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Persistent buffers saved with the adapter (e.g. fixed masks); none by default."""
        return iter(())


def _own_parameters(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Parameter]]:
    for name, parameter in module._parameters.items():
        if parameter is not None:
            yield prefix + name, parameter
    for name, child in module._modules.items():
        if child is None or name == "base_layer" or isinstance(child, AdapterModule):
            continue
        yield from _own_parameters(child, prefix + name + ".")


class AdapterLayer(AdapterModule):
    """Wraps a frozen linear-like module: ``y = base_layer(x) + delta(x)``.

    Subclasses implement :meth:`adapter_forward`; mergeable ones also :meth:`delta_weight`
    (or override :meth:`merge`/:meth:`unmerge` when the delta is not additive).
    """

    mergeable: ClassVar[bool] = False
    routes_rows: ClassVar[bool] = True  # False: the layer cannot split a batch by rows (it shares state across layers)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if any(parameter.is_meta for parameter in innermost(base_layer).parameters()):
            raise OffloadedWeightsError(
                f"cannot wrap {type(innermost(base_layer)).__name__}: its weight is on the meta device, as accelerate "
                f"leaves a layer that device_map offloaded to 'cpu' or 'disk'. {OFFLOAD_ADVICE}"
            )
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_shape(base_layer)
        self.merged = False

    @property
    def alters_base(self) -> bool:
        """Whether this layer changed the frozen weight it wraps (e.g. PiSSA's residual): then the base is not
        itself while the layer is switched off, so the layer cannot share the base with other adapters."""
        return False

    @property
    def weight(self) -> torch.Tensor:
        """The frozen weight, for model code that reads ``layer.weight`` (e.g. T5's dtype check)."""
        return innermost(self.base_layer).weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(innermost(self.base_layer), "bias", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if current_rows() is not None:
            return route(self.adapter_name, x, lambda rows: self.adapted_forward(rows, *args, **kwargs),
                         lambda rows: self.base_layer(rows, *args, **kwargs))
        if not self.active:
            return self.base_layer(x, *args, **kwargs)
        return self.adapted_forward(x, *args, **kwargs)

    def adapted_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The layer's output with its adapter on (a method with its own fused path overrides this)."""
        output = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return output
        return self.adapter_forward(x, output)

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def known_inert(self) -> bool | None:
        """Whether the delta is exactly zero, for a layer that cannot be probed with an ``(n, in_features)``
        input (a wrapped parameter's owner takes other inputs); ``None``: probe it."""
        return None

    def release_base(self) -> nn.Module:
        """The frozen module to put back when the adapter is taken off unmerged; a method that changed it
        at initialisation (e.g. PiSSA's residual) restores it here."""
        return self.base_layer

    def delta_weight(self) -> torch.Tensor:
        """The additive change to the base weight, in ``(out_features, in_features)`` layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged")

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = _stored_weight(self)
        weight.add_(_to_storage_layout(self, self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = _stored_weight(self)
        weight.sub_(_to_storage_layout(self, self.delta_weight()).to(weight.dtype))
        self.merged = False


def innermost(module: nn.Module) -> nn.Module:
    """The frozen module under any number of adapter wrappers."""
    while isinstance(module, AdapterLayer):
        module = module.base_layer
    return module


def tensor_options(like: torch.Tensor) -> dict[str, torch.dtype | torch.device]:
    """The ``dtype`` and ``device`` keywords for a method's new tensors beside ``like`` (a base weight): its
    dtype, float32 where it is stored as integers (a quantized base), and its device."""
    return {"dtype": like.dtype if like.is_floating_point() else torch.float32, "device": like.device}


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear, a GPT-2 Conv1D, or a wrapper of either."""
    module = innermost(module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if in_features is None or out_features is None:
        raise TypeError(f"cannot wrap {type(module).__name__}: it is not a linear layer")
    return in_features, out_features


def _stored_weight(layer: AdapterLayer) -> torch.Tensor:
    """The frozen float weight tensor to merge into, in its storage layout (Conv1D stores ``(in, out)``); to read
    a base weight, quantized or not, use :func:`peftlab.core.quantized.base_weight`."""
    module = innermost(layer.base_layer)
    weight = module.weight
    if not isinstance(weight, torch.Tensor) or type(weight) not in (torch.Tensor, nn.Parameter):
        raise TypeError(
            f"cannot merge into a {type(weight).__name__} weight; dequantize the base first (peftlab.merge does it for QLoRA)"
        )
    return weight.data


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The frozen weight as ``(out_features, in_features)``, whatever the module's storage layout."""
    module = innermost(module)
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def _to_storage_layout(layer: AdapterLayer, delta: torch.Tensor) -> torch.Tensor:
    return delta.T if isinstance(innermost(layer.base_layer), Conv1D) else delta
