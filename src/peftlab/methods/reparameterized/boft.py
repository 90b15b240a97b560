"""BOFT: orthogonal fine-tuning by butterfly factorisation (Liu et al. 2024, Parameter-Efficient Orthogonal
Finetuning via Butterfly Factorization, arXiv 2311.06243), in HF peft 0.21's form.

The input-side rotation of OFT becomes a product of ``m`` (``boft_n_butterfly_factor``) sparse orthogonal
factors, each block-diagonal between a butterfly permutation and its inverse, so that ``m`` small factors
together mix every input feature; a trained vector ``s`` then scales the outputs:

    y = s ⊙ (W M^T x) + b,    M = B_{m-1} ... B_1 B_0,    B_i = P_i blockdiag(R_i1 .. R_in) P_i^T

(row-vector form ``y = s ⊙ (x M) W^T + b``). ``R_ij = (I - S)(I + S)^{-1}`` with ``S = (A - A^T) / 2`` from a
full trained ``b x b`` block ``A`` (``boft_R``: m x n x b x b, peft's layout); ``P_0 = I`` and ``P_i`` (i >= 1)
gathers, within each run of ``b 2^i`` features, the half-blocks of size ``b/2`` evens first, then odds, so
factor ``i`` pairs features ``b 2^(i-1)`` apart (peft's ``block_butterfly_perm``). ``boft_dropout`` sets a
random share of one factor's blocks to the identity in training steps. ``A = 0`` and ``s = 1`` at
initialisation, so the model starts as the base. With ``m = 1`` BOFT is OFT with full-block storage plus ``s``.
Mergeable: ``W <- diag(s) W M^T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.methods.reparameterized._orthogonal import (
    InputRotation,
    block_size_for,
    cayley,
    drop_blocks,
    inject_blocks,
    make_parameter,
    rotate_blocks,
)


@dataclass(frozen=True, kw_only=True)
class BOFTConfig(MethodConfig):
    method = "boft"

    boft_block_size: int = option(4, "Size b of each orthogonal block; 0: set by boft_block_num. Give one of the "
                                     "two (block size x block number = the layer's in_features).")
    boft_block_num: int = option(0, "Number of blocks per factor; 0: set by boft_block_size.")
    boft_n_butterfly_factor: int = option(1, "Number m of butterfly factors (1: plain block-diagonal, as OFT).")
    boft_dropout: float = option(0.0, "Share of one factor's blocks set to the identity in each training step.")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.boft_block_size >= 0, self, "boft_block_size", "must be >= 0")
        require(self.boft_block_num >= 0, self, "boft_block_num", "must be >= 0")
        require((self.boft_block_size == 0) != (self.boft_block_num == 0), self, "boft_block_size",
                f"give exactly one of boft_block_size and boft_block_num (the other 0; boft_block_num is "
                f"{self.boft_block_num})")
        require(self.boft_n_butterfly_factor >= 1, self, "boft_n_butterfly_factor", "must be >= 1")
        require(0.0 <= self.boft_dropout < 1.0, self, "boft_dropout", "must be in [0, 1)")

    def fits(self, features: int, size: int) -> bool:
        """Whether blocks of ``size`` can carry this config's butterfly factors over ``features`` inputs."""
        if size < 1 or features % size:
            return False
        extra = self.boft_n_butterfly_factor - 1  # factors beyond the first, each doubling the span
        return extra == 0 or (size % 2 == 0 and (features // size) % 2 == 0 and features % (size << extra) == 0)

    def block_size(self, layer: str, features: int) -> int:
        """This layer's block size; an error naming the layer and the valid choices when it does not fit."""
        sizes = [size for size in range(1, features + 1) if self.fits(features, size)]
        return block_size_for(layer, features, sizes, ("boft_block_size", self.boft_block_size),
                              ("boft_block_num", self.boft_block_num))


def butterfly_permutation(features: int, block_size: int, factor: int) -> torch.Tensor:
    """``perm`` with ``P[j, perm[j]] = 1`` for factor ``factor`` (0: the identity): in each run of
    ``block_size * 2^factor`` features, the half-blocks (``block_size / 2`` each) even-numbered first, then odd."""
    if factor == 0:
        return torch.arange(features)
    half, run = block_size // 2, block_size << factor
    pieces = torch.arange(features).reshape(features // run, run // half, half)  # (runs, pieces per run, half)
    order = torch.cat([torch.arange(0, run // half, 2), torch.arange(1, run // half, 2)])
    return pieces[:, order].reshape(features)


class BOFTLinear(InputRotation):
    """``y = s ⊙ base_without_bias(x @ B_{m-1} @ ... @ B_0) + b``."""

    def __init__(self, base_layer: nn.Module, config: BOFTConfig, block_size: int) -> None:
        super().__init__(base_layer)
        like = next(base_layer.parameters())
        factors, blocks = config.boft_n_butterfly_factor, self.in_features // block_size
        self.boft_R = make_parameter((factors, blocks, block_size, block_size), like)
        self.boft_s = make_parameter((self.out_features, 1), like, fill=1.0)
        self.dropout = config.boft_dropout
        permutations = torch.stack([butterfly_permutation(self.in_features, block_size, i) for i in range(factors)])
        self.register_buffer("permutations", permutations.to(like.device), persistent=False)
        self.register_buffer("inverses", permutations.argsort(dim=1).to(like.device), persistent=False)

    def rotations(self) -> torch.Tensor:
        """The orthogonal blocks ``R_ij``, (m, n, b, b)."""
        a = self.boft_R
        factors, blocks, size, _ = a.shape
        wide = a.to(torch.promote_types(a.dtype, torch.float32)).reshape(factors * blocks, size, size)
        return cayley((wide - wide.transpose(-1, -2)) / 2).reshape(a.shape).to(a.dtype)

    def rotate(self, x: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        rotations = self.rotations()
        if dropout and self.dropout > 0:
            chosen = int(torch.randint(rotations.shape[0], ()))
            rotations = rotations.clone()
            rotations[chosen] = drop_blocks(rotations[chosen], self.dropout)
        for i in reversed(range(rotations.shape[0])):  # x M = x B_{m-1} ... B_0;  x B_i = ((x P_i) D_i) P_i^T
            if i == 0:  # P_0 = I
                x = rotate_blocks(x, rotations[0])
            else:
                x = rotate_blocks(x[..., self.inverses[i]], rotations[i])[..., self.permutations[i]]
        return x

    def output_scale(self) -> torch.Tensor:
        return self.boft_s[:, 0]


def inject(model: nn.Module, config: BOFTConfig) -> Injection:
    return inject_blocks(model, config, BOFTLinear)


register(MethodSpec(
    name="boft",
    family="reparameterized",
    config_class=BOFTConfig,
    inject=inject,
    paper="Liu et al. 2024, Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization (arXiv 2311.06243)",
    summary="Input-side rotation as a product of butterfly-permuted block-diagonal orthogonal factors, "
            "plus an output scale.",
    mergeable=True,
))
