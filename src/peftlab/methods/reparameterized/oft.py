"""OFT: orthogonal fine-tuning (Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal
Finetuning, arXiv 2306.07280), in the form of HF peft 0.21 (whose weights it reads and writes).

The frozen weight is rotated on its input side by a block-diagonal orthogonal ``R`` (in x in, ``r`` blocks of
``b x b``, ``r b = in``): the paper's ``W_paper <- R W_paper`` with its ``W_paper`` (in x out) is, in torch's
(out x in) layout, ``W <- W R^T``, so

    y = W (R^T x) + b,      R = blockdiag(R_1, ..., R_r),      R_i = (I - Q_i)(I + Q_i)^{-1}

with ``Q_i`` skew-symmetric, stored as its ``b(b-1)/2`` strictly-upper entries (``oft_R``, one row per
block; one row for all blocks with ``block_share``). That is the paper's Cayley ``(I + S)(I - S)^{-1}`` with
``S = -Q`` (peft's sign). ``use_cayley_neumann`` takes peft's truncated Neumann series instead, which
approximates ``(I + Q)(I - Q)^{-1}``, the transpose of the exact rotation for the same ``Q`` (peft's default;
faster, orthogonal only up to the truncation). ``coft`` (constrained OFT) keeps each ``Q`` in a Frobenius ball
of radius ``eps / sqrt(rows)``, as peft does: the forward uses the projected ``Q`` and the training hooks
project the parameter after each optimizer step. ``module_dropout`` sets a random share of the blocks to the
identity in training steps (peft 0.21 builds this layer but does not call it). ``Q = 0`` at initialisation, so
``R = I`` and the model starts as the base. Mergeable: ``W <- W R^T``, unmerged by solving it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.hooks import TrainingHooks
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.reparameterized._orthogonal import (
    InputRotation,
    block_size_for,
    cayley,
    cayley_neumann,
    drop_blocks,
    inject_blocks,
    layers_in_use,
    make_parameter,
    rotate_blocks,
    skew_from_upper,
)


@dataclass(frozen=True, kw_only=True)
class OFTConfig(MethodConfig):
    method = "oft"

    r: int = option(0, "Number of orthogonal blocks per layer (peft's r); 0: set by oft_block_size. Give r or "
                       "oft_block_size, not both (r x oft_block_size = the layer's in_features).")
    oft_block_size: int = option(32, "Size b of each orthogonal block (b(b-1)/2 parameters per block); 0: set by r.")
    coft: bool = option(False, "Constrained OFT: keep each block's skew-symmetric Q within a ball of radius eps.")
    eps: float = option(6e-5, "COFT's radius (divided by sqrt of the number of blocks); used only with coft.")
    block_share: bool = option(False, "One block shared by all the blocks of a layer.")
    module_dropout: float = option(0.0, "Share of a layer's blocks set to the identity in each training step.")
    use_cayley_neumann: bool = option(False, "peft's truncated Neumann series instead of the exact Cayley "
                                             "transform (a solve); approximates the transposed rotation.")
    num_cayley_neumann_terms: int = option(5, "Terms of the Neumann series (with use_cayley_neumann).")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.r >= 0, self, "r", "must be >= 0")
        require(self.oft_block_size >= 0, self, "oft_block_size", "must be >= 0")
        require((self.r == 0) != (self.oft_block_size == 0), self, "r",
                f"give exactly one of r and oft_block_size (the other 0; oft_block_size is {self.oft_block_size})")
        require(self.eps > 0, self, "eps", "must be positive")
        require(0.0 <= self.module_dropout < 1.0, self, "module_dropout", "must be in [0, 1)")
        require(self.num_cayley_neumann_terms >= 1, self, "num_cayley_neumann_terms", "must be >= 1")

    def block_size(self, layer: str, in_features: int) -> int:
        """This layer's block size; an error naming the layer and the valid choices when it does not fit."""
        sizes = [d for d in range(2, in_features + 1) if in_features % d == 0]
        return block_size_for(layer, in_features, sizes, ("oft_block_size", self.oft_block_size), ("r", self.r))


def project_to_ball(upper: torch.Tensor, eps: float) -> torch.Tensor:
    """COFT's projection (peft's): each row's skew matrix (Frobenius norm ``sqrt(2) |row|``) scaled back onto
    the ball of radius ``eps / sqrt(rows)`` when it lies outside."""
    radius = eps / math.sqrt(upper.shape[0])
    norm = math.sqrt(2.0) * upper.norm(dim=1, keepdim=True)
    return torch.where(norm <= radius, upper, upper * (radius / norm))


class OFTLinear(InputRotation):
    """``y = base(x @ blockdiag(R_1 .. R_r))``: each block of ``b`` input features rotated by its own ``R_i``."""

    def __init__(self, base_layer: nn.Module, config: OFTConfig, block_size: int) -> None:
        super().__init__(base_layer)
        self.block_size = block_size
        self.blocks = self.in_features // block_size
        rows = 1 if config.block_share else self.blocks
        self.oft_R = make_parameter((rows, block_size * (block_size - 1) // 2), next(base_layer.parameters()))
        self.coft, self.eps, self.module_dropout = config.coft, config.eps, config.module_dropout
        self.neumann_terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else 0

    def rotations(self) -> torch.Tensor:
        """The ``(rows, b, b)`` orthogonal blocks, from the (COFT-projected) parameter."""
        upper = self.oft_R
        if self.coft:  # the projected value forward, the gradient straight through to the parameter
            upper = upper + (project_to_ball(upper.detach(), self.eps) - upper.detach())
        skew = skew_from_upper(upper.to(torch.promote_types(upper.dtype, torch.float32)), self.block_size)
        blocks = cayley_neumann(skew, self.neumann_terms) if self.neumann_terms else cayley(skew)
        return blocks.to(upper.dtype)

    def rotate(self, x: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        blocks = self.rotations()
        if dropout and self.module_dropout > 0 and blocks.shape[0] > 1:
            blocks = drop_blocks(blocks, self.module_dropout)
        return rotate_blocks(x, blocks.expand(self.blocks, -1, -1))

    @torch.no_grad()
    def project_(self) -> None:
        """COFT: put the parameter itself back in its ball (after an optimizer step)."""
        if self.coft:
            self.oft_R.copy_(project_to_ball(self.oft_R, self.eps))


class COFTHooks(TrainingHooks):
    """COFT's projection after each optimizer step, so the trained parameter stays in its ball."""

    def __init__(self, model: nn.Module, config: OFTConfig) -> None:
        self.layers = [layer for layer in layers_in_use(model, OFTLinear) if layer.coft]

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for layer in self.layers:
            layer.project_()


def inject(model: nn.Module, config: OFTConfig) -> Injection:
    return inject_blocks(model, config, OFTLinear)


def training_hooks(model: nn.Module, config: OFTConfig) -> TrainingHooks:
    return COFTHooks(model, config) if config.coft else TrainingHooks()


register(MethodSpec(
    name="oft",
    family="reparameterized",
    config_class=OFTConfig,
    inject=inject,
    paper="Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning (arXiv 2306.07280)",
    summary="Block-diagonal orthogonal rotation (Cayley transform) of each frozen weight's input side.",
    mergeable=True,
    hooks=MethodHooks(training_hooks=training_hooks),
))
