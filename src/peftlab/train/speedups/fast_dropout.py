"""Fast dropout for CPU training: each 64-bit random draw gives four elements their masks.

Dropout (Srivastava et al. 2014, JMLR 15): ``y = x * m / (1 - p)`` with ``m_i ~ Bernoulli(1 - p)``, and
backward ``dx = dy * m / (1 - p)``. PyTorch's CPU dropout draws one random float per element
(``bernoulli_``). Here one draw of 64 random bits from torch's generator serves four elements, a quarter of
the draws: element ``i`` is kept when its 16-bit slice ``u_i`` (uniform over 2^16 values) is at least
``k = round(p * 2^16)``, so it is kept with probability ``1 - p'``, ``p' = k / 2^16`` (``p`` to within
2^-17: 0.1 becomes 0.1000061), and the scale is ``1 / (1 - p')``, so ``E[y] = x`` exactly. The masks follow ``torch.manual_seed``; they are not the masks ``nn.Dropout`` draws.

Inside :func:`fast_dropout`, every ``F.dropout`` (``nn.Dropout`` calls it) and every
``F.scaled_dot_product_attention`` with ``dropout_p > 0`` uses these masks, for tensors of at least
``MIN_ELEMENTS`` (below that PyTorch's own dropout costs less per call). The attention is then computed
as PyTorch's CPU math path computes it when dropout is on (``softmax(q kᵀ * scale + mask)``, dropout, ``@ v``);
without dropout the call goes to PyTorch's own kernel. Eval mode, ``p = 0``, in-place dropout, no-grad
forwards and code being compiled (``torch.compile`` draws its own masks) run the plain functions.

Activation checkpointing recomputes a layer in backward, where this context may be off: the layer must
draw the same masks again. ``peftlab train`` passes :func:`checkpoint_contexts` to the non-reentrant
checkpoint (``enable_activation_checkpointing(model, context_fn=checkpoint_contexts)``), which redraws them
the fast way when the forward did; a reentrant checkpoint runs its first pass without grad, so its layers draw PyTorch's masks.
Non-reentrant checkpointing without :func:`checkpoint_contexts` refuses (torch sees the saved tensors differ).

    with fast_dropout():
        loss = model(**batch).loss
    loss.backward()
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

LANES = 4  # 16-bit slices per 64-bit draw
LEVELS = 1 << 16
MIN_ELEMENTS = 1 << 16  # below this PyTorch's own dropout is as fast (it costs less per call)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` keeping each element with probability ``1 - p'``, and ``1 / (1 - p')``."""
    dropped_levels = round(p * LEVELS)
    count = math.prod(shape)
    words = torch.empty((count + LANES - 1) // LANES, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # all 64 bits uniform
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes >= dropped_levels - LEVELS // 2, LEVELS / (LEVELS - dropped_levels)


class _MaskedScale(torch.autograd.Function):
    """``y = x * m * scale``; keeps only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, mask, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, mask, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with probability ``p`` (training), masks drawn as the module docstring says."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    mask, scale = keep_mask(x.shape, p, x.device)
    return _MaskedScale.apply(x, mask, scale)


def attention_with_dropout(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                           scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as its math path computes it, with this module's dropout."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeats, dim=-3), value.repeat_interleave(repeats, dim=-3)
    scores = (query * scale) @ key.transpose(-2, -1)
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probabilities = torch.ops.aten._safe_softmax(scores, -1)  # a fully masked row gives zeros, as SDPA does
    return dropout(probabilities, dropout_p) @ value


def _attention_dropout(args: tuple, kwargs: dict[str, Any]) -> tuple[float, int]:
    """An attention call's ``dropout_p`` and how many probabilities it drops from (``query`` x ``key`` rows)."""
    bound = dict(zip(("query", "key", "value", "attn_mask", "dropout_p"), args)) | kwargs
    return float(bound.get("dropout_p", 0.0)), bound["query"].shape[:-1].numel() * bound["key"].shape[-2]


def draws_dropout(model: nn.Module) -> bool:
    """Whether ``model`` holds a dropout layer with ``p > 0`` (transformers' models with dropout all do)."""
    return any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules())


def _dropout_call(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, float, bool, bool]:
    bound = dict(zip(("input", "p", "training", "inplace"), args)) | kwargs
    return bound["input"], float(bound.get("p", 0.5)), bool(bound.get("training", True)), bool(bound.get("inplace"))


class _FastDropoutMode(TorchFunctionMode):
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.dropout and func is not F.scaled_dot_product_attention:  # every other call: straight on
            return func(*args, **kwargs)
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return func(*args, **kwargs)  # no backward to serve (a reentrant checkpoint's first pass), or compiled
        if func is F.dropout:
            x, p, training, inplace = _dropout_call(args, kwargs)
            if training and not inplace and x.numel() >= MIN_ELEMENTS:
                return dropout(x, p)
        else:
            p, probabilities = _attention_dropout(args, kwargs)
            if p > 0 and probabilities >= MIN_ELEMENTS:
                return attention_with_dropout(*args, **kwargs)
        return func(*args, **kwargs)


_active = threading.local()


@contextmanager
def fast_dropout(enabled: bool = True) -> Iterator[None]:
    """Within the block, dropout draws its masks as the module docstring says (nothing changes if not enabled)."""
    if not enabled:
        yield
        return
    depth = getattr(_active, "depth", 0)
    _active.depth = depth + 1
    try:
        with _FastDropoutMode():
            yield
    finally:
        _active.depth = depth


def checkpoint_contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
    """``context_fn`` for non-reentrant ``torch.utils.checkpoint``: a layer's recomputation in backward draws
    its masks the way its forward did (fast inside :func:`fast_dropout`, PyTorch's outside it), so the
    restored random state gives it the same masks."""
    recompute = _FastDropoutMode() if getattr(_active, "depth", 0) else nullcontext()
    return nullcontext(), recompute
