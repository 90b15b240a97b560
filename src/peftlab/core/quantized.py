"""Quantized bases: bitsandbytes' 4-bit (NF4/FP4, QLoRA's) and 8-bit (LLM.int8) linear layers.

Two jobs live here and nowhere else. Quantizing: :func:`quantize_model` turns a loaded float model's linear
layers into bitsandbytes layers in place, :func:`load_quantized` loads a model that way through transformers.
Reading: :func:`base_weight` is the one way an adapter reads its frozen weight, ``(out, in)`` whatever stores
it: a float ``nn.Linear`` or GPT-2 ``Conv1D`` its own weight, a 4- or 8-bit layer the weight it stands for,
dequantized by bitsandbytes. A float delta cannot be folded into quantized codes, so a merge over a quantized
base first swaps in its dequantized float copy (:func:`dequantize_base`) and unmerge puts the quantized layer
itself back (:func:`restore_quantized_base`), bit-identical.

bitsandbytes is imported on first use (it is the ``quant`` extra): while it never was, no layer is a quantized one
and every other method runs without it.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterLayer, innermost
from peftlab.core.probe import probe_output
from peftlab.core.targeting import find_modules, replace_module


class BitsAndBytesMissing(UserError, ImportError):
    """A quantized base was asked for without bitsandbytes installed."""


class QuantizationMismatchError(UserError, ValueError):
    pass


class UnreadableWeightError(UserError, TypeError):
    """A base weight that is neither float nor a bitsandbytes layer's."""


class QuantizationOptions(Protocol):
    """What quantizing reads from a method's config (QLoRA's, QDoRA's own options document each field)."""

    @property
    def bits(self) -> int: ...
    @property
    def quant_type(self) -> str: ...
    @property
    def double_quant(self) -> bool: ...
    @property
    def quantize_modules(self) -> tuple[str, ...]: ...
    @property
    def torch_compute_dtype(self) -> torch.dtype: ...


def bitsandbytes() -> ModuleType:
    """bitsandbytes, imported on first use; a clear message when it is not installed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise BitsAndBytesMissing("a 4- or 8-bit base (qlora, qdora) needs bitsandbytes: "
                                  "pip install 'peftlab[quant]' (or bitsandbytes>=0.45)") from None
    return bnb


def quantized_types() -> tuple[type, ...]:
    """bitsandbytes' quantized linear classes; none while it was never imported (then no layer is one)."""
    bnb = sys.modules.get("bitsandbytes")
    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt) if bnb is not None else ()


def is_quantized(layer: nn.Module) -> bool:
    return isinstance(layer, quantized_types())


def is_4bit(layer: nn.Module) -> bool:
    return isinstance(layer, quantized_types()[:1])


def is_8bit(layer: nn.Module) -> bool:
    return isinstance(layer, quantized_types()[1:])


# -- reading -----------------------------------------------------------------------------------------

def base_weight(layer: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The frozen ``(out, in)`` weight of a linear layer, or of the base under any adapter wrappers, in
    ``dtype`` when given. A float ``nn.Linear``/``Conv1D`` gives its stored weight (a view, when no cast is
    asked for); a bitsandbytes 4-bit layer ``dequantize_4bit`` of its codes (in the dtype it was quantized
    from), an 8-bit one ``int8_vectorwise_dequant`` of its codes (float32): new tensors outside autograd."""
    module = innermost(layer)
    if is_quantized(module):
        with torch.no_grad():
            weight = _dequantized(module)
    elif isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.is_floating_point():
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight
    else:
        found = getattr(getattr(module, "weight", None), "dtype", None)
        raise UnreadableWeightError(f"cannot read the {found} weight of a {type(module).__name__}; "
                                    f"use a float or bitsandbytes base")
    return weight if dtype is None else weight.to(dtype)


def _dequantized(layer: nn.Module) -> torch.Tensor:
    functional = bitsandbytes().functional
    if is_4bit(layer):
        return functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    codes = layer.state.CB if layer.state.CB is not None else layer.weight.data
    scales = layer.state.SCB if layer.state.SCB is not None else layer.weight.SCB
    return functional.int8_vectorwise_dequant(codes, scales)


@torch.no_grad()
def dequantize_linear(layer: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A float ``nn.Linear`` (or GPT-2 ``Conv1D`` when that is what was quantized) with the dequantized weight."""
    weight = base_weight(layer, dtype)
    out_features, in_features = weight.shape
    bias = layer.bias.detach().to(dtype) if layer.bias is not None else None
    if getattr(layer, "peftlab_conv1d", False):
        plain = Conv1D(out_features, in_features).to(device=weight.device, dtype=dtype)
        plain.weight.copy_(weight.T)
        plain.bias.copy_(bias if bias is not None else torch.zeros_like(plain.bias))
    else:
        plain = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=dtype)
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.requires_grad_(False)
    return plain


def dequantize_base(layer: AdapterLayer, dtype: torch.dtype) -> None:
    """Before a merge: a quantized ``base_layer`` gives its place to its dequantized float copy and is kept
    aside, outside the module tree (neither saved nor moved), for :func:`restore_quantized_base`. A float base
    stays as it is."""
    if is_quantized(layer.base_layer):
        layer.__dict__["quantized_base"] = layer.base_layer
        layer.base_layer = dequantize_linear(layer.base_layer, dtype)


def restore_quantized_base(layer: AdapterLayer) -> bool:
    """After a merge over a quantized base: that very layer back (not quantized again); whether there was one."""
    quantized = layer.__dict__.pop("quantized_base", None)
    if quantized is not None:
        layer.base_layer = quantized
    return quantized is not None


# -- quantizing --------------------------------------------------------------------------------------

def quantize_linear(module: nn.Module, options: QuantizationOptions) -> nn.Module:
    """A bitsandbytes copy of a float ``nn.Linear`` or GPT-2 ``Conv1D`` (remembered, to restore on merge)."""
    bnb = bitsandbytes()
    conv = isinstance(module, Conv1D)
    weight = (module.weight.T if conv else module.weight).detach().contiguous()
    out_features, in_features = weight.shape
    has_bias = module.bias is not None
    if options.bits == 4:
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=has_bias, compute_dtype=options.torch_compute_dtype,
                                  compress_statistics=options.double_quant, quant_type=options.quant_type,
                                  device="meta")
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, compress_statistics=options.double_quant,
                                         quant_type=options.quant_type, module=layer)
        bias_dtype = options.torch_compute_dtype  # bitsandbytes would cast the bias in place on the first forward
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=0.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
        bias_dtype = weight.dtype
    if has_bias:
        layer.bias = nn.Parameter(module.bias.detach().to(bias_dtype).clone(), requires_grad=False)
    layer = layer.to(weight.device)  # bitsandbytes quantizes here
    layer.peftlab_conv1d = conv
    if conv:  # the base fingerprint of a saved adapter compares the float model's (in, out) layout
        layer.weight.peftlab_storage_shape = (in_features, out_features)
    _keep_portable_layout(layer)
    return layer


def _keep_portable_layout(layer: nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights in place for AVX512-BF16 CPUs at the first eval forward; keeping the
    portable layout leaves the stored tensors bit-identical and dequantizable anywhere."""
    if is_4bit(layer):
        layer.support_avx512bf16_for_cpu = False


def _check_quantized(name: str, layer: nn.Module, options: QuantizationOptions) -> None:
    if is_4bit(layer):
        state = layer.weight.quant_state
        found = (4, state.quant_type, bool(state.nested))
    else:
        found = (8, None, False)
    wanted = (options.bits, options.quant_type, options.double_quant) if options.bits == 4 else (8, None, False)
    if found != wanted:
        raise QuantizationMismatchError(
            f"{name} is already quantized as bits/quant_type/double_quant={found}, but the qlora options ask for "
            f"{wanted}; pass matching options or load the model with peftlab's load_quantized(path, config)"
        )
    _keep_portable_layout(layer)


def quantize_model(model: nn.Module, options: QuantizationOptions) -> nn.Module:
    """Quantize an already-loaded float model's ``options.quantize_modules`` in place; returns ``model``.

    Layers that are already bitsandbytes layers (a model loaded in 4 bits) are checked against ``options``.
    Layers the model class keeps in float32 (``_keep_in_fp32_modules``, e.g. T5's ``wo``, whose input it
    casts to the weight's dtype) stay float, as in transformers' own 4-bit loading.
    """
    keep_float = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in find_modules(model, options.quantize_modules):
        if keep_float & set(name.split(".")):
            continue
        if is_quantized(module):
            _check_quantized(name, module, options)
        elif isinstance(module, (nn.Linear, Conv1D)) and type(module) in (nn.Linear, Conv1D):
            replace_module(model, name, quantize_linear(module, options))
    return model


def load_quantized(path_or_name: str | os.PathLike, options: QuantizationOptions,
                   model_class: Any = None, **from_pretrained: Any) -> nn.Module:
    """Load a model with its linear layers quantized as ``options`` say, through transformers'
    ``BitsAndBytesConfig``. On a CPU-only machine the layers load and quantize on the CPU (bitsandbytes
    >= 0.45 has CPU kernels); nothing moves to a GPU unless ``device_map`` says so. transformers skips the
    output head (``lm_head``); :func:`quantize_model` / ``peftlab.apply`` then leave the loaded layers as
    they are and only check that their format matches ``options``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bitsandbytes()  # a clear message when it is missing
    if options.bits == 4:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=options.quant_type,
                                          bnb_4bit_use_double_quant=options.double_quant,
                                          bnb_4bit_compute_dtype=options.torch_compute_dtype)
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model_class = model_class or AutoModelForCausalLM
    model = model_class.from_pretrained(path_or_name, quantization_config=quantization, **from_pretrained)
    for module in model.modules():
        _keep_portable_layout(module)
    return model


# -- accounting --------------------------------------------------------------------------------------

def base_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """``(bytes, weights)`` of the quantized base layers: stored codes plus every quantisation constant
    (absmax, nested absmax and offset, code tables), each tensor counted once."""
    seen: set[int] = set()
    total_bytes = total_weights = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total_bytes
        if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total_bytes += tensor.numel() * tensor.element_size()

    for module in model.modules():
        if is_4bit(module):
            state = module.weight.quant_state
            add(module.weight.data)
            for tensor in (state.absmax, state.code, state.offset):
                add(tensor)
            if state.nested:
                add(state.state2.absmax)
                add(state.state2.code)
            total_weights += int(torch.Size(state.shape).numel())
        elif is_8bit(module):
            add(module.state.CB if module.state.CB is not None else module.weight.data)
            add(module.state.SCB if module.state.SCB is not None else module.weight.SCB)
            total_weights += module.in_features * module.out_features
    return total_bytes, total_weights


def int8_merge_tolerance(model: nn.Module, output: torch.Tensor | None = None) -> float:
    """A merge tolerance for an 8-bit base: ``max|output| x 2^-8`` (one input rounding to 8 bits, relative to
    the row's absmax) per 8-bit layer; 0 without one. ``output``: the model's probe output, if at hand."""
    layers = sum(is_8bit(m) for m in model.modules())
    if not layers:
        return 0.0
    output = probe_output(model) if output is None else output
    return output.abs().max().item() * 2**-8 * layers
