"""VeRA: vector-based random matrix adaptation (Kopiczko et al. 2024, arXiv 2310.11454).

One pair of frozen random matrices ``A`` (r x max_in) and ``B`` (max_out x r) is shared by every adapted
layer; each layer trains only two vectors, ``d`` (r) and ``b`` (out):

    y = W x + Λ_b B_[:out] Λ_d A_[:, :in] x          (Λ = diag)

``A`` and ``B`` are Kaiming-uniform draws from ``projection_seed`` (peft's draws for the same key): they are regenerated on load, never
saved, so the adapter file holds only the vectors (and the config the seed). ``b`` starts at zero and
``d`` at ``d_initial``, so the model starts equal to the base. Mergeable: ``W <- W + Λ_b B Λ_d A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, linear_shape, tensor_options
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module


@dataclass(frozen=True, kw_only=True)
class VeRAConfig(MethodConfig):
    method = "vera"

    rank: int = option(256, "Rank r of the shared random matrices (VeRA affords a large r: they are not trained).")
    projection_seed: int = option(0, "Seed that regenerates the shared frozen A and B.")
    d_initial: float = option(0.1, "Starting value of every entry of the trainable vector d.")
    dropout: float = option(0.0, "Dropout on the adapter's input (0 skips the dropout work).")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")


class SharedProjections:
    """The frozen ``A`` and ``B`` every layer shares, made once from the seed, copied once per device/dtype."""

    def __init__(self, rank: int, max_in: int, max_out: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.a = _kaiming_uniform((rank, max_in), generator)
        self.b = _kaiming_uniform((max_out, rank), generator)
        self._copies: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = (self.a.to(device, dtype), self.b.to(device, dtype))
        return self._copies[key]


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt(2), fan-in ``shape[1]``) from ``generator``. A then B from one CPU generator
    seeded with ``projection_seed`` draws the same matrices as peft's VeRA with ``projection_prng_key``."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRALinear(AdapterLayer):
    """``y = base(x) + b ⊙ (B_[:out] (d ⊙ (A_[:, :in] dropout(x))))``."""

    mergeable = True

    def __init__(self, base_layer: nn.Module, shared: SharedProjections, d_initial: float, dropout: float) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = tensor_options(weight)
        rank = shared.a.shape[0]
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, **factory))
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), d_initial, **factory))
        self.shared = shared
        shared.on(factory["device"], factory["dtype"])  # made here, not in a (compiled) forward's first call
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.shared.on(self.vera_lambda_b.device, self.vera_lambda_b.dtype)
        return a[:, : self.in_features], b[: self.out_features]

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        a, b = self._projections()
        hidden = F.linear(self.dropout(x).to(a.dtype), a) * self.vera_lambda_d
        return base_output + (F.linear(hidden, b) * self.vera_lambda_b).to(base_output.dtype)

    def delta_weight(self) -> torch.Tensor:
        a, b = self._projections()
        return (self.vera_lambda_b[:, None] * b) @ (self.vera_lambda_d[:, None] * a)


def inject(model: nn.Module, config: VeRAConfig) -> Injection:
    targets = find_modules(model, config.target_modules)
    shapes = [linear_shape(module) for _, module in targets]  # (in, out)
    shared = SharedProjections(
        config.rank, max(i for i, _ in shapes), max(o for _, o in shapes), config.projection_seed
    )
    for name, module in targets:
        replace_module(model, name, VeRALinear(module, shared, config.d_initial, config.dropout))
    return Injection()


register(MethodSpec(
    name="vera",
    family="reparameterized",
    config_class=VeRAConfig,
    inject=inject,
    paper="Kopiczko et al. 2024, VeRA: Vector-based Random Matrix Adaptation (arXiv 2310.11454)",
    summary="Frozen shared random low-rank matrices; each layer trains two scaling vectors.",
    mergeable=True,
))
