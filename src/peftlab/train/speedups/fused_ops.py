"""Fused training ops for the step around the adapter: RMSNorm and the SwiGLU gate, backward by hand.

Eager PyTorch differentiates these layers op by op: every intermediate is a kernel launch and a
pass over memory, and several are kept for backward. The two functions here compute the same
values and gradients with fewer passes and keep less:

* RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467): ``y = w * x / sqrt(mean(x^2) + eps)``.
  Keeps ``x`` and ``rstd = 1 / sqrt(mean(x^2) + eps)``; backward, with ``x^ = x * rstd`` and
  ``g^ = dy * w``: ``dx = rstd * (g^ - x^ * mean(g^ * x^))`` and ``dw = sum(dy * x^)``.
* SwiGLU (Shazeer 2020, arXiv 2002.05202): ``h = silu(gate) * up``. Keeps ``gate`` and ``up`` and
  recomputes ``silu`` in backward (one activation of ``(tokens, intermediate)`` less per layer):
  ``d_up = dh * silu(gate)``, ``d_gate = dh * up * silu'(gate)``.

:func:`fuse` swaps the ``forward`` of the modules it recognises (an instance attribute: the class
and the weights are untouched, adapters inside the MLP keep working); :func:`unfuse` restores it;
:func:`fused_ops` does both around a block. A norm whose input and weight dtypes differ runs its
own forward, so the values always match the model's.

    with fused_ops(model):
        loss = lm_loss(model, batch); loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.train.speedups.compile import inside_compiled_block

# Classes whose forward is exactly the formula above (transformers' Llama family and T5).
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm",
                       "T5LayerNorm"})
SWIGLU_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
_SILU_CLASSES = ("SiLU", "SiLUActivation")


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return (x32 * rstd).to(x.dtype).mul_(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        x_hat = x.float().mul_(rstd) if x.dtype != torch.float32 else x * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * x_hat.to(x.dtype)).reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_hat = (grad * weight).float()
            dot = (grad_hat * x_hat).mean(-1, keepdim=True)
            grad_x = grad_hat.sub_(x_hat.mul_(dot)).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in fp32 and cast back to ``x``'s dtype."""
    return _RMSNorm.apply(x, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, keeping only ``gate`` and ``up`` for backward."""
    return _SwiGLU.apply(gate, up)


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != self.weight.dtype:
        return type(self).forward(self, hidden_states)
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def _fused_forward(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    name = type(module).__name__
    if name in RMS_NORMS and hasattr(module, "variance_epsilon"):
        return _norm_forward
    if name in SWIGLU_MLPS and type(getattr(module, "act_fn", None)).__name__ in _SILU_CLASSES:
        return _mlp_forward
    return None


def fuse(model: nn.Module) -> int:
    """Give every recognised RMSNorm and SwiGLU MLP in ``model`` its fused forward; returns how many.

    Modules inside a compiled block (:func:`peftlab.train.speedups.compile.compile_blocks`) stay as they are: the
    compiler fuses them itself, and faster than these functions would."""
    compiled = inside_compiled_block(model)
    count = 0
    for module in model.modules():
        forward = _fused_forward(module)
        if forward is not None and not is_fused(module) and id(module) not in compiled:
            module.forward = MethodType(forward, module)
            count += 1
    return count


def unfuse(model: nn.Module) -> None:
    """Restore the class's own forward on every module :func:`fuse` changed."""
    for module in model.modules():
        if is_fused(module):
            del module.forward


def is_fused(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, MethodType) and forward.__func__ in (_norm_forward, _mlp_forward)


@contextmanager
def fused_ops(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Fused forwards inside the block (``enabled=False``: the model as it is); yields how many modules."""
    count = fuse(model) if enabled else 0
    try:
        yield count
    finally:
        if enabled:
            unfuse(model)
