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

``init="loftq"`` starts from LoftQ (Li et al. 2023, arXiv 2310.08659; ``_loftq.py``): the stored base and the
first ``s B A`` are fitted together so that their sum approximates the float weight, instead of ``B = 0`` over
``q(W)``. Quantizing the base, and reading its weight back, is ``core/quantized.py``'s (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.method_hooks import adamw
from peftlab.core.quantized import (  # noqa: F401  (the quantisation names qlora has always offered)
    BitsAndBytesMissing,
    QuantizationMismatchError,
    base_weight,
    base_weight_bytes,
    bitsandbytes,
    dequantize_base,
    dequantize_linear,
    int8_merge_tolerance,
    is_4bit,
    is_quantized,
    load_quantized,
    quantize_linear,
    quantize_model,
    restore_quantized_base,
)
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized._loftq import loftq_layer
from peftlab.methods.reparameterized.lora import LoRALinear


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
    init: Literal["kaiming", "gaussian", "loftq"] = option(
        "kaiming", "Start of B A: 'kaiming' or 'gaussian' (B = 0, over q(W)); 'loftq' (arXiv 2310.08659): the "
        "stored base Q and s B A fitted by alternating quantisation and rank-r SVD, so Q + s B A approximates W.")
    loftq_iterations: int = option(
        1, "With init='loftq': how many times to alternate quantising W - s B A and the SVD of W - Q (peft: loftq_iter).")

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")
        require(self.alpha > 0, self, "alpha", "must be positive")
        require(self.bits in (4, 8), self, "bits", "must be 4 or 8")
        require(self.loftq_iterations >= 1, self, "loftq_iterations", "must be at least 1")

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.compute_dtype)


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
            grad_x = (grad_c @ base_weight(ctx.base, grad_c.dtype)).to(grad.dtype)
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

    loftq = False  # whether the stored base is LoftQ's Q_T rather than q(W)

    @torch.no_grad()
    def start_from_loftq(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.lora_A.copy_(a)
        self.lora_B.copy_(b)
        self.loftq = True

    @property
    def alters_base(self) -> bool:
        return self.loftq or super().alters_base

    def adapted_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not args and not kwargs and self._runs_as_one_product(x):
            dropped = self.dropout(x) if self.training and not isinstance(self.dropout, nn.Identity) else None
            return _FourBitLoRAProduct.apply(x, dropped, self.lora_A, self.lora_B, self.base_layer, self.scaling)
        return super().adapted_forward(x, *args, **kwargs)

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
        dequantize_base(self, self.lora_A.dtype)
        super().merge()

    def unmerge(self) -> None:
        if self.merged and restore_quantized_base(self):
            self.merged = False


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


def make_optimizer(model: nn.Module, config: QLoRAConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Paged AdamW (bitsandbytes) when the model is on CUDA; fused AdamW on CPU."""
    on_cuda = any(p.is_cuda for group in groups for p in group["params"])
    return bitsandbytes().optim.PagedAdamW(groups) if on_cuda else adamw(groups)


def inject(model: nn.Module, config: QLoRAConfig) -> Injection:
    starts = loftq_model(model, config) if config.init == "loftq" else {}
    quantize_model(model, config)
    init = "kaiming" if config.init == "loftq" else config.init
    for name, module in find_modules(model, config.target_modules):
        layer_class = QuantizedLoRALinear if is_quantized(module) else LoRALinear
        layer = layer_class(module, config.rank, config.alpha / config.rank, config.dropout, init)
        if name in starts:
            layer.start_from_loftq(*starts[name])
        replace_module(model, name, layer)
    return Injection()


def loftq_model(model: nn.Module, config: QLoRAConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoftQ on every target that is stored quantized: its float layer replaced by ``Q_T``; ``{name: (A, B)}``.
    Targets kept in float (outside ``quantize_modules``, or kept float32 by the model) start as LoRA does."""
    quantized = {name for name, _ in find_modules(model, config.quantize_modules)}
    keep_float = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    starts = {}
    for name, module in find_modules(model, config.target_modules):
        if name not in quantized or keep_float & set(name.split(".")):
            continue
        if is_quantized(module):
            raise QuantizationMismatchError(
                f"init='loftq' fits the quantized base to the float weight, but {name} was loaded quantized; apply "
                f"qlora with init='loftq' to the float model (it quantizes it)")
        layer, starts[name] = loftq_layer(module, config, config.rank, config.alpha / config.rank,
                                          config.loftq_iterations)
        replace_module(model, name, layer)
    return starts


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
