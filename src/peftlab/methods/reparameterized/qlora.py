"""QLoRA: LoRA over a frozen base stored in 4 bits (Dettmers et al. 2023, "QLoRA: Efficient Finetuning
of Quantized LLMs", arXiv 2305.14314).

``y = dequant(W_NF4) x + (alpha / r) B A dropout(x)``: the base linear weights are stored as 4-bit
NormalFloat with double quantisation (the per-block absmax constants quantised again to 8 bits) by
``bitsandbytes``, about 0.5 bytes per weight; the forward dequantizes to ``compute_dtype`` and, as the
paper's Eq. 5 does, runs the LoRA matmuls in it too (float32 factors cast per step). LoRA (the
:class:`LoRALinear` of ``lora.py``) sits on all linear layers by default; only it trains. An 8-bit
(LLM.int8) base is the ``bits=8`` option. On CUDA the optimizer is bitsandbytes' paged AdamW (its states
page to CPU memory under pressure); on CPU, fused AdamW (paging needs CUDA unified memory).

Merging cannot fold a float delta into 4-bit codes: it replaces each adapted layer's base by its
dequantized float weight plus ``(alpha / r) B A`` (a dequantized merged model); unmerge puts the original
quantized layer back. bitsandbytes 0.50 quantizes on CPU too (when a layer is moved ``.to("cpu")``).
Over an 8-bit base the merged model is not the unmerged one to float rounding: LLM.int8 also rounds each
layer's input to 8 bits (row-wise absmax, after a cast to float16), the merged float model does not. Pass
``tolerance=int8_merge_tolerance(model)`` (``max|output| x 2^-8`` per 8-bit layer; ~0.017 on the tiny test
LLaMA, whose merge moves its logits by ~0.011) to accept that; the default 1e-4 refuses, saying so.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.errors import UserError
from peftlab.core.hooks import adamw
from peftlab.core.injection import Injection
from peftlab.core.probe import probe_output
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized.lora import LoRALinear



class BitsAndBytesMissing(UserError, ImportError):
    """A quantized base was asked for without bitsandbytes installed."""


def bitsandbytes() -> ModuleType:
    """bitsandbytes, imported on first use: every other method runs without it (it is the ``quant`` extra)."""
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


def is_4bit(layer: nn.Module) -> bool:
    return isinstance(layer, quantized_types()[:1])


def is_8bit(layer: nn.Module) -> bool:
    return isinstance(layer, quantized_types()[1:])


@dataclass(frozen=True, kw_only=True)
class QLoRAConfig(MethodConfig):
    method = "qlora"

    rank: int = option(64, "LoRA rank r (the paper: 64).")
    alpha: float = option(16.0, "LoRA scale numerator: the update is multiplied by alpha / r (the paper: 16).")
    dropout: float = option(0.1, "Dropout on the LoRA input (the paper: 0.1 up to 13B, 0.05 above).")
    target_modules: tuple[str, ...] = option(("all_linear",), "Linear layers that get LoRA: presets or module patterns.")
    quantize_modules: tuple[str, ...] = option(
        ("all_linear",), "Linear layers stored quantized (embeddings, heads and norms stay in float).")
    bits: int = option(4, "Base weight bits: 4 (NF4/FP4, QLoRA) or 8 (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = option("nf4", "4-bit data type: nf4 (NormalFloat, the paper's) or fp4.")
    double_quant: bool = option(True, "Quantize the 4-bit blocks' absmax constants again (saves ~0.37 bits/weight).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = option(
        "bfloat16", "dtype the 4-bit weights are dequantized to for the matmul, of the base biases and of the "
        "LoRA matmuls (the factors and their optimizer state stay float32).")

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")
        require(self.alpha > 0, self, "alpha", "must be positive")
        require(self.bits in (4, 8), self, "bits", "must be 4 or 8")

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.compute_dtype)


class QuantizationMismatchError(UserError, ValueError):
    pass


# -- quantizing --------------------------------------------------------------------------------------

def quantize_linear(module: nn.Module, config: QLoRAConfig) -> nn.Module:
    """A bitsandbytes copy of a float ``nn.Linear`` or GPT-2 ``Conv1D`` (remembered, to restore on merge)."""
    bnb = bitsandbytes()
    conv = isinstance(module, Conv1D)
    weight = (module.weight.T if conv else module.weight).detach().contiguous()
    out_features, in_features = weight.shape
    has_bias = module.bias is not None
    if config.bits == 4:
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=has_bias, compute_dtype=config.torch_compute_dtype,
                                  compress_statistics=config.double_quant, quant_type=config.quant_type, device="meta")
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, compress_statistics=config.double_quant,
                                         quant_type=config.quant_type, module=layer)
        bias_dtype = config.torch_compute_dtype  # bitsandbytes would cast the bias in place on the first forward
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


def _check_quantized(name: str, layer: nn.Module, config: QLoRAConfig) -> None:
    if is_4bit(layer):
        state = layer.weight.quant_state
        found = (4, state.quant_type, bool(state.nested))
    else:
        found = (8, None, False)
    wanted = (config.bits, config.quant_type, config.double_quant) if config.bits == 4 else (8, None, False)
    if found != wanted:
        raise QuantizationMismatchError(
            f"{name} is already quantized as bits/quant_type/double_quant={found}, but the qlora options ask for "
            f"{wanted}; pass matching options or load the model with peftlab's load_quantized(path, config)"
        )
    _keep_portable_layout(layer)


def quantize_model(model: nn.Module, config: QLoRAConfig | None = None) -> nn.Module:
    """Quantize an already-loaded float model's ``config.quantize_modules`` in place; returns ``model``.

    Layers that are already bitsandbytes layers (a model loaded in 4 bits) are checked against ``config``.
    Layers the model class keeps in float32 (``_keep_in_fp32_modules``, e.g. T5's ``wo``, whose input it
    casts to the weight's dtype) stay float, as in transformers' own 4-bit loading.
    """
    config = config or QLoRAConfig()
    keep_float = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in find_modules(model, config.quantize_modules):
        if keep_float & set(name.split(".")):
            continue
        if isinstance(module, quantized_types()):
            _check_quantized(name, module, config)
        elif isinstance(module, (nn.Linear, Conv1D)) and type(module) in (nn.Linear, Conv1D):
            replace_module(model, name, quantize_linear(module, config))
    return model


def load_quantized(path_or_name: str | os.PathLike, config: QLoRAConfig | None = None,
                   model_class: Any = None, **from_pretrained: Any) -> nn.Module:
    """Load a model with its linear layers quantized as ``config`` says, through transformers'
    ``BitsAndBytesConfig``. On a CPU-only machine the layers load and quantize on the CPU (bitsandbytes
    >= 0.45 has CPU kernels); nothing moves to a GPU unless ``device_map`` says so. transformers skips the
    output head (``lm_head``); :func:`quantize_model` / ``peftlab.apply`` then leave the loaded layers as
    they are and only check that their format matches ``config``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bitsandbytes()  # a clear message when it is missing
    config = config or QLoRAConfig()
    if config.bits == 4:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                                          bnb_4bit_use_double_quant=config.double_quant,
                                          bnb_4bit_compute_dtype=config.torch_compute_dtype)
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    model_class = model_class or AutoModelForCausalLM
    model = model_class.from_pretrained(path_or_name, quantization_config=quantization, **from_pretrained)
    for module in model.modules():
        _keep_portable_layout(module)
    return model


# -- dequantizing ------------------------------------------------------------------------------------

@torch.no_grad()
def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The float ``(out, in)`` weight a bitsandbytes layer stands for."""
    if is_4bit(layer):
        return bitsandbytes().functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    scales = layer.state.SCB if layer.state.SCB is not None else layer.weight.SCB
    codes = layer.state.CB if layer.state.CB is not None else layer.weight.data
    return codes.float() * scales.float().view(-1, 1) / 127.0


@torch.no_grad()
def dequantize_linear(layer: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A float ``nn.Linear`` (or GPT-2 ``Conv1D`` when that is what was quantized) with the dequantized weight."""
    weight = dequantized_weight(layer).to(dtype)
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


class _FourBitLoRAProduct(torch.autograd.Function):
    """``y = base(x_c) + s (d_c A_cᵀ) B_cᵀ`` over a bitsandbytes 4-bit base, with ``d = dropout(x)`` (``x``
    itself without dropout) and ``x_c``, ``d_c``, ``A_c``, ``B_c`` in the base's compute dtype, the sum in
    ``x``'s, and the backward written out: ``g_c = g`` in the compute dtype, ``∂B = g_cᵀ h`` (``h = s d_c A_cᵀ``),
    ``g_h = s g_c B_c``, ``∂A = g_hᵀ d_c``, ``∂x = g_c deq(W)`` and ``∂d = g_h A_c`` (added to ``∂x`` in ``x``'s
    dtype when ``d`` is ``x``).

    The very operations, in the same order, that autograd records for the plain forward (bitsandbytes' layer on
    ``x``, then the LoRA path on ``d`` cast again), so outputs and gradients are bit-identical (tested), but
    ``g`` (and, without dropout, ``x``) is cast once instead of twice and each sum takes one pass instead of
    cast-then-add: less time per step, the saving largest in an eager CPU step without dropout."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dropped: torch.Tensor | None,  # type: ignore[override]
                lora_A: torch.Tensor, lora_B: torch.Tensor, base: nn.Module, scaling: float) -> torch.Tensor:
        compute = base.compute_dtype
        x_c, A_c, B_c = x.to(compute), lora_A.to(compute), lora_B.to(compute)
        lora_input = x_c if dropped is None else dropped.to(compute)
        hidden = F.linear(lora_input, A_c) * scaling
        output = base(x_c).to(x.dtype).add_(F.linear(hidden, B_c))
        ctx.save_for_backward(lora_input, hidden, A_c, B_c)
        ctx.base, ctx.scaling, ctx.reads_x = base, scaling, dropped is None
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        lora_input, hidden, A_c, B_c = ctx.saved_tensors
        grad_c = grad.to(lora_input.dtype)
        grad_hidden = (grad_c @ B_c) * ctx.scaling
        grad_B = (grad_c.reshape(-1, grad_c.shape[-1]).T @ hidden.reshape(-1, hidden.shape[-1])).float()
        grad_A = (grad_hidden.reshape(-1, grad_hidden.shape[-1]).T
                  @ lora_input.reshape(-1, lora_input.shape[-1])).float()
        grad_x = grad_dropped = None
        if ctx.needs_input_grad[0]:
            weight = ctx.base.weight
            dequantized = bitsandbytes().functional.dequantize_4bit(weight.data, weight.quant_state)
            grad_x = (grad_c @ dequantized.to(grad_c.dtype)).to(grad.dtype)
            if ctx.reads_x:
                grad_x.add_(grad_hidden @ A_c)
        if ctx.needs_input_grad[1]:
            grad_dropped = (grad_hidden @ A_c).to(grad.dtype)
        return grad_x, grad_dropped, grad_A, grad_B, None, None


class QuantizedLoRALinear(LoRALinear):
    """LoRA over a bitsandbytes base. Over a 4-bit base the LoRA matmuls run in the base's compute dtype, as
    in the paper's Eq. 5 (``X^BF16 L1^BF16 L2^BF16``); the factors, their gradients and the optimizer state
    stay float32. ``merge`` swaps in the dequantized base plus the delta; ``unmerge`` restores the quantized
    layer itself (kept aside, not re-quantized, so it is bit-identical). Training steps run through
    :class:`_FourBitLoRAProduct` (same numbers, fewer passes)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not args and not kwargs and self._runs_as_one_product(x):
            dropped = self.dropout(x) if self.training and not isinstance(self.dropout, nn.Identity) else None
            return _FourBitLoRAProduct.apply(x, dropped, self.lora_A, self.lora_B, self.base_layer, self.scaling)
        return super().forward(x, *args, **kwargs)

    def _runs_as_one_product(self, x: torch.Tensor) -> bool:
        """A training forward over a plain 4-bit base (no hooks, frozen bias, weights in bitsandbytes' portable
        layout) with trainable float32 factors, outside the compiler (which fuses the casts itself)."""
        base = self.base_layer
        return (not torch.compiler.is_compiling() and torch.is_grad_enabled() and not self.merged
                and is_4bit(base) and getattr(base, "compute_dtype", None) is not None and x.is_floating_point()
                and base.compute_dtype != self.lora_A.dtype == self.lora_B.dtype == torch.float32
                and self.lora_A.requires_grad and self.lora_B.requires_grad
                and (base.bias is None or not base.bias.requires_grad)
                and not base._forward_hooks and not base._forward_pre_hooks
                and not getattr(base.weight.quant_state, "packing_format_for_cpu", False))

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        compute = getattr(self.base_layer, "compute_dtype", None) if is_4bit(self.base_layer) else None
        if compute is None or compute == self.lora_A.dtype:
            return super().adapter_forward(x, base_output)
        hidden = F.linear(self.dropout(x).to(compute), self.lora_A.to(compute)) * self.scaling
        return base_output + F.linear(hidden, self.lora_B.to(compute)).to(base_output.dtype)

    def merge(self) -> None:
        if self.merged:
            return
        self.__dict__["quantized_base"] = self.base_layer  # kept outside the module tree while merged
        self.base_layer = dequantize_linear(self.base_layer, self.lora_A.dtype)
        super().merge()

    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer = self.__dict__.pop("quantized_base")
        self.merged = False


def int8_merge_tolerance(model: nn.Module, output: torch.Tensor | None = None) -> float:
    """A merge tolerance for an 8-bit base: ``max|output| x 2^-8`` (one input rounding to 8 bits, relative to
    the row's absmax) per 8-bit layer; 0 without one. ``output``: the model's probe output, if at hand."""
    layers = sum(is_8bit(m) for m in model.modules())
    if not layers:
        return 0.0
    output = probe_output(model) if output is None else output
    return output.abs().max().item() * 2**-8 * layers


def merge_note(model: nn.Module, output: torch.Tensor) -> str | None:
    """Why a merge over an 8-bit base was refused, and the tolerance that accepts it."""
    tolerance = int8_merge_tolerance(model, output)
    if not tolerance:
        return None
    return (
        "The base is 8-bit (LLM.int8): unmerged, each quantized layer rounds its input to 8 bits, the merged float "
        "model does not, so outputs move by up to about max|output| x 2^-8 per 8-bit layer. If that is acceptable, "
        f"merge with tolerance={tolerance:.2g} (peftlab.merge(model, tolerance=...), "
        "peftlab.methods.reparameterized.qlora.int8_merge_tolerance(model), or `peftlab merge --tolerance`)."
    )


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


def make_optimizer(model: nn.Module, config: QLoRAConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Paged AdamW (bitsandbytes) when the model is on CUDA; fused AdamW on CPU."""
    on_cuda = any(p.is_cuda for group in groups for p in group["params"])
    return bitsandbytes().optim.PagedAdamW(groups) if on_cuda else adamw(groups)


def inject(model: nn.Module, config: QLoRAConfig) -> Injection:
    quantize_model(model, config)
    for name, module in find_modules(model, config.target_modules):
        layer_class = QuantizedLoRALinear if isinstance(module, quantized_types()) else LoRALinear
        replace_module(model, name, layer_class(module, config.rank, config.alpha / config.rank, config.dropout))
    return Injection()


register(MethodSpec(
    name="qlora",
    family="reparameterized",
    config_class=QLoRAConfig,
    inject=inject,
    paper="Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs (arXiv 2305.14314)",
    summary="LoRA over a frozen 4-bit NF4 base with double quantisation; paged AdamW on CUDA.",
    mergeable=True,
    hooks=MethodHooks(optimizer=make_optimizer, merge_note=merge_note),
))
