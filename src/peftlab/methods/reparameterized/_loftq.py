"""LoftQ: a QLoRA start that makes the 4-bit base plus the first LoRA product approximate the float weight
(Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models", arXiv 2310.08659).

QLoRA's zero start (``B = 0``) begins at ``deq(q(W))``, off ``W`` by the whole quantisation error. LoftQ
alternates, for ``t = 1 .. T`` from ``s B_0 A_0 = 0`` (the paper's Algorithm 1)::

    Q_t        = q(W - s B_{t-1} A_{t-1})      quantized exactly as the base is stored (QLoRA's options)
    s B_t A_t  = SVD_r(W - deq(Q_t))           the best rank-r approximation of what the quantisation lost

and the layer starts at ``deq(Q_T) + s B_T A_T``: the stored base is ``Q_T`` in place of ``q(W)``. The factors are
split evenly, ``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T`` (``_lora_init.principal_factors``), so the
scale ``s = alpha / r`` holds for any ``alpha`` (peft's ``loftq_init`` sets ``B A = U_r S_r V_r^T``, which is the
same start only at ``alpha = r``). It runs wherever QLoRA does, the CPU included: quantising is
``core.quantized``'s (bitsandbytes' layer, which quantizes on the CPU), while peft's ``loftq_init`` moves the
weight to CUDA. Against peft's ``loftq_init`` (peft 0.21.2, its CUDA placements sent to the CPU; ``alpha = r``, no
double quantisation, as peft quantizes): the same stored base bit for bit at ``T = 1`` and ``B A`` within 1e-6
(``test_loftq.py``). At ``T > 1`` this code subtracts ``s B A`` in float64 and peft in float32, so a weight at a
code's edge can round the other way and a block's scale can differ in its last bit: on a 576 x 1536 Gaussian
layer at rank 16 and ``T = 3``, 63 codes of 884,736 differed, the start error was the same to 1e-7, and ``B A``
differed by up to 4e-4 (the residual's singular values are nearly flat there, so a rank-16 subspace is not well
defined); on the tests' 32 x 64 and 96 x 128 layers at ``T = 3`` the bases agree within 2e-7.

Measured start, ``||W - (deq(Q) + s B A)||_F / ||W||_F`` against QLoRA's zero start ``||W - deq(q(W))||_F / ||W||_F``
(NF4, double quantisation, float32 on the CPU; ``pytest -s tests/methods/reparameterized/test_loftq.py -k error``)::

    layer (alpha 16)                      QLoRA zero start   LoftQ T=1   LoftQ T=5
    576 x 1536, N(0, 1), rank 16               0.0920          0.0888      0.0826
    tiny LLaMA down_proj 32 x 64, rank 4       0.0920          0.0774      0.0667

(Gaussian weights, random or freshly initialised: no pretrained checkpoint is at hand offline. Pretrained
weights, with outliers and low-rank structure, are where the paper reports its larger gains.)

A saved adapter keeps ``A`` and ``B``; loading it repeats the alternation on the float base (deterministic for the
same numerics), which rebuilds ``Q_T``, then copies the trained factors over the fresh ones.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftlab.core.quantized import QuantizationOptions, base_weight, quantize_linear
from peftlab.methods.reparameterized._lora_init import Factors, InitError, principal_factors


@torch.no_grad()
def loftq_layer(module: nn.Module, options: QuantizationOptions, rank: int, scaling: float,
                iterations: int) -> tuple[nn.Module, Factors]:
    """For a float linear ``module``: the quantized layer to store in its place (``Q_T``) and ``(A_T, B_T)``.

    Each step quantizes through ``quantize_linear`` on ``module`` itself, its weight set to the step's target
    for the call (restored after, also on an error), so ``Q_T`` is stored exactly as QLoRA stores a base."""
    stored = module.weight
    conv = isinstance(module, Conv1D)
    weight = (stored.T if conv else stored).detach().to(torch.float64, copy=True)  # (out, in)
    if rank > min(weight.shape):
        raise InitError(f"LoftQ: rank {rank} exceeds the smaller side of a {tuple(weight.shape)} weight; lower `rank`")
    original = stored.detach().clone()
    target = weight
    try:
        for _ in range(iterations):
            stored.copy_((target.T if conv else target).to(stored.dtype))
            layer = quantize_linear(module, options)
            factors = principal_factors(weight - base_weight(layer, torch.float64), rank, scaling)
            target = weight - scaling * (factors[1] @ factors[0])
    finally:
        stored.copy_(original)
    return layer, (factors[0].float(), factors[1].float())


def start_error(weight: torch.Tensor, quantized: torch.Tensor, factors: Factors | None, scaling: float) -> float:
    """``||W - (deq(Q) + s B A)||_F / ||W||_F``; ``factors`` None: QLoRA's zero start."""
    weight, start = weight.double(), quantized.double()
    if factors is not None:
        start = start + scaling * (factors[1].double() @ factors[0].double())
    return ((weight - start).norm() / weight.norm()).item()
