"""What OFT, BOFT and HRA share: a layer that rotates its input before the frozen layer, the Cayley
transform of skew-symmetric blocks, block-diagonal products, and the block-size checks.

All three compute ``y = W (M^T x) + b`` for an (almost) orthogonal ``M`` (in x in) built from their own
parameters; in row-vector form, the form the code uses, ``y = base(x @ M)``. Merging writes
``W <- W M^T`` (BOFT also scales rows, ``W <- diag(s) W M^T``); unmerging solves that back, exact up to
float rounding whether or not ``M`` is exactly orthogonal (peft's truncated Neumann series is not).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.config import ConfigError, MethodConfig
from peftlab.core.layers import AdapterLayer, linear_shape, weight_out_in
from peftlab.core.state import DEFAULT_ADAPTER, Injection, adapter_modules, peft_state
from peftlab.core.targeting import find_modules, replace_module


def skew_from_upper(upper: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n, b(b-1)/2)`` strictly-upper-triangular entries (row-major, ``torch.triu_indices(b, b, 1)``'s
    order, as peft stores OFT's ``oft_R``) -> ``(n, b, b)`` skew-symmetric ``Q = U - U^T``."""
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=upper.device)
    full = upper.new_zeros(upper.shape[0], block_size, block_size)
    full[:, rows, cols] = upper
    return full - full.transpose(-2, -1)


def cayley(skew: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform of a batch of skew-symmetric ``Q``: ``(I - Q)(I + Q)^{-1}``, orthogonal.
    (The paper's ``(I + S)(I - S)^{-1}`` with ``S = -Q``: peft's sign, so its weights give its rotations.)"""
    eye = torch.eye(skew.shape[-1], device=skew.device, dtype=skew.dtype).expand_as(skew)
    return torch.linalg.solve(eye + skew, eye - skew, left=False)


def cayley_neumann(skew: torch.Tensor, terms: int) -> torch.Tensor:
    """peft's Cayley-Neumann approximation: ``I + 2Q + 2Q^2 + ... + 2Q^{k-2} + Q^{k-1}`` with
    ``k = max(terms, 4)`` for ``terms >= 3`` (peft's loop gives 3 terms the 4-term sum), ``I + 2Q`` for 2 and
    ``I`` for 1. It truncates ``(I + Q)(I - Q)^{-1} = I + 2 sum_j Q^j``: the inverse (transpose) of
    :func:`cayley` of the same ``Q``, orthogonal only up to the truncation."""
    eye = torch.eye(skew.shape[-1], device=skew.device, dtype=skew.dtype).expand_as(skew)
    if terms <= 1:
        return eye.clone()
    if terms == 2:
        return eye + 2 * skew
    last = max(terms, 4) - 1
    result, power = eye + 2 * skew, skew
    for exponent in range(2, last + 1):
        power = power @ skew
        result = result + (2 if exponent < last else 1) * power
    return result


def rotate_blocks(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x @ blockdiag(blocks)`` without the dense matrix: ``x`` (..., n b), ``blocks`` (n, b, b)."""
    n, b, _ = blocks.shape
    rotated = torch.einsum("...rk,rkc->...rc", x.reshape(*x.shape[:-1], n, b), blocks)  # (..., n, b)
    return rotated.reshape(x.shape)


def drop_blocks(blocks: torch.Tensor, p: float) -> torch.Tensor:
    """Multiplicative dropout (OFT/BOFT's module dropout): ``int(p n)`` of the ``n`` blocks, drawn at random,
    are the identity for this step."""
    n, b, _ = blocks.shape
    dropped = torch.zeros(n, dtype=torch.bool, device=blocks.device)
    dropped[torch.randperm(n, device=blocks.device)[: int(p * n)]] = True
    eye = torch.eye(b, device=blocks.device, dtype=blocks.dtype)
    return torch.where(dropped[:, None, None], eye, blocks)


def block_size_for(layer: str, features: int, sizes: list[int], size_option: tuple[str, int],
                   count_option: tuple[str, int]) -> int:
    """The block size of a layer with ``features`` inputs, from a block size or a block count (whichever option
    is non-zero), when it is one of the valid ``sizes``; else an error naming the layer and the choices."""
    (size_name, size), (count_name, count) = size_option, count_option
    if size:
        name, value, choices = size_name, size, sizes
    else:
        name, value, choices = count_name, count, sorted(features // s for s in sizes)
    if value not in choices:
        raise ConfigError(
            f"{name}={value} does not fit layer {layer!r}, whose input has {features} features; "
            f"choices for this layer: {', '.join(map(str, choices))}"
        )
    return size or features // count


def inject_blocks(model: nn.Module, config: MethodConfig, layer_class: type[AdapterLayer]) -> Injection:
    """Wrap each target in ``layer_class(module, config, block_size)``, every target's size checked first."""
    targets = find_modules(model, config.target_modules)
    sizes = [config.block_size(name, linear_shape(module)[0]) for name, module in targets]
    for (name, module), size in zip(targets, sizes):
        replace_module(model, name, layer_class(module, config, size))
    return Injection()


class InputRotation(AdapterLayer):
    """``y = s ⊙ (W (M^T x)) + b``, i.e. ``base(x @ M)`` with its bias kept out of the scale ``s`` (BOFT's;
    ``None`` for OFT and HRA). Subclasses give :meth:`rotate` (``x @ M``) and may give :meth:`output_scale`."""

    mergeable = True

    def rotate(self, x: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        """``x @ M``; ``dropout``: with the method's module dropout, if it has one (training steps only)."""
        raise NotImplementedError

    def output_scale(self) -> torch.Tensor | None:
        return None

    def _parameter(self) -> torch.Tensor:
        return next(p for _, p in self.adapter_parameters())

    def adapted_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        rotated = self.rotate(x.to(self._parameter().dtype), dropout=self.training).to(x.dtype)
        output = self.base_layer(rotated, *args, **kwargs)
        scale = self.output_scale()
        if scale is None:
            return output
        bias = self.bias
        if bias is None:
            return output * scale.to(output.dtype)
        return (output - bias) * scale.to(output.dtype) + bias

    def rotation(self) -> torch.Tensor:
        """The dense ``M`` (in x in), in float32 or wider."""
        parameter = self._parameter()
        dtype = torch.promote_types(parameter.dtype, torch.float32)
        eye = torch.eye(self.in_features, device=parameter.device, dtype=parameter.dtype)
        return self.rotate(eye).to(dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = weight_out_in(self.base_layer)  # a view of the stored weight
        rotation = self.rotation()
        merged = weight.to(rotation.dtype) @ rotation.T
        scale = self.output_scale()
        if scale is not None:
            merged = merged * scale.to(merged.dtype).reshape(-1, 1)
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = weight_out_in(self.base_layer)
        rotation = self.rotation()
        merged = weight.to(rotation.dtype)
        scale = self.output_scale()
        if scale is not None:
            merged = merged / scale.to(merged.dtype).reshape(-1, 1)
        weight.copy_(torch.linalg.solve(rotation.T, merged, left=False).to(weight.dtype))
        self.merged = False


def layers_in_use(model: nn.Module, layer_class: type[AdapterLayer]) -> list[AdapterLayer]:
    """The ``layer_class`` layers of the adapter in use (not those of other named adapters on the model)."""
    state = peft_state(model)
    name = state.name if state is not None else DEFAULT_ADAPTER
    return [module for _, module in adapter_modules(model, name) if isinstance(module, layer_class)]


def make_parameter(shape: tuple[int, ...], like: torch.Tensor, fill: float = 0.0) -> nn.Parameter:
    """A new trainable tensor beside the base weight ``like`` (its device; float32 for an integer base)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return nn.Parameter(torch.full(shape, fill, dtype=dtype, device=like.device))
