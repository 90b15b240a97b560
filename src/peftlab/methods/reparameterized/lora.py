"""LoRA: a trainable low-rank update beside each frozen weight (Hu et al. 2022, arXiv 2106.09685).

``y = W x + s * B A dropout(x)`` with ``s = alpha / r`` and, by default, ``A`` (r x in) Kaiming-uniform
and ``B`` (out x r) zero, so the adapted model starts equal to the base. Mergeable: ``W <- W + s B A``.
Options that change no structure: ``scaling_rule="rslora"`` gives ``s = alpha / sqrt(r)`` (rank-stabilised
LoRA, Kalajdzievski 2023, arXiv 2312.03732); ``init`` picks a start from ``_lora_init.py`` (PiSSA, OLoRA, ...).
``target_parameters`` adapts parameters that no linear module holds, such as the 3-D expert stacks of
mixture-of-experts models, with one update per expert (``_lora_parameters.py``). It is an option, not a
method: it changes where LoRA's one formula applies (as ``target_modules`` does), not the formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, tensor_options, weight_out_in
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.serialization import copy_adapter_tensors
from peftlab.core.state import Injection, peft_state
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized._lora_init import INIT_STRATEGIES, RESIDUAL_INITS
from peftlab.methods.reparameterized._lora_parameters import find_target_parameters, inject_parameters


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    method = "lora"

    rank: int = option(8, "Rank r of the update B A.")
    alpha: float = option(16.0, "Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = option(0.0, "Dropout on the adapter's input (0 skips the dropout work).")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )
    target_parameters: tuple[str, ...] = option(
        (),
        "Parameters to adapt where no linear layer holds them, as patterns of their full names (e.g. "
        "'experts.gate_up_proj', 'experts.down_proj': mixture-of-experts stacks, one update per expert); "
        "2-D or 3-D only. Set target_modules=[] to adapt these alone.",
    )

    scaling_rule: Literal["lora", "rslora"] = option(
        "lora", "'lora': s = alpha / r; 'rslora': s = alpha / sqrt(r), rank-stabilised (arXiv 2312.03732)."
    )
    init: str = option(
        "kaiming",
        "Start of B A: 'kaiming' or 'gaussian' (B = 0); 'pissa' (principal singular vectors, arXiv 2404.02948) "
        "or 'olora' (QR factors, arXiv 2406.01775), which keep the residual in the frozen base weight.",
    )

    def validate(self) -> None:
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")
        require(self.alpha > 0, self, "alpha", "must be positive")
        require(self.init in INIT_STRATEGIES, self, "init", f"must be one of {', '.join(INIT_STRATEGIES)}")
        require(bool(self.target_modules or self.target_parameters), self, "target_modules",
                "is empty and so is target_parameters: give modules or parameters to adapt")
        if self.target_parameters:
            require(self.dropout == 0.0, self, "dropout", "must be 0 with target_parameters (the update is "
                    "added to a weight, so there is no input of its own to drop)")
            require(self.init in ("kaiming", "gaussian"), self, "init",
                    "must be 'kaiming' or 'gaussian' with target_parameters")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.scaling_rule == "rslora" else self.rank)


def add_up_projection(base_output: torch.Tensor, hidden: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``base_output + hidden @ upᵀ``; in one dtype, one GEMM that accumulates onto the base output (no
    ``(tokens, out)`` temporary)."""
    if base_output.dtype != hidden.dtype:
        return base_output + F.linear(hidden, up).to(base_output.dtype)
    flat = torch.addmm(base_output.reshape(-1, up.shape[0]), hidden.reshape(-1, hidden.shape[-1]), up.T)
    return flat.view(base_output.shape)


class LoRALinear(AdapterLayer):
    """``y = base(x) + scaling * B A dropout(x)``."""

    mergeable = True

    def __init__(
        self, base_layer: nn.Module, rank: int, scaling: float, dropout: float, init: str = "kaiming"
    ) -> None:
        super().__init__(base_layer)
        weight = next(base_layer.parameters())
        factory = tensor_options(weight)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        initial_factors = INIT_STRATEGIES[init](self.lora_A, base_layer, scaling)
        if initial_factors is not None:
            self._keep_residual(*initial_factors)

    @torch.no_grad()
    def _keep_residual(self, a_init: torch.Tensor, b_init: torch.Tensor) -> None:
        """A residual init (PiSSA, OLoRA): start at ``B0 A0``, keep them, leave ``W - s B0 A0`` in the base."""
        self.lora_A.copy_(a_init)
        self.lora_B.copy_(b_init)
        self.register_buffer("lora_A_init", self.lora_A.detach().clone())
        self.register_buffer("lora_B_init", self.lora_B.detach().clone())
        weight = weight_out_in(self.base_layer)
        weight.sub_((self.scaling * (self.lora_B_init @ self.lora_A_init)).to(weight.dtype))

    @torch.no_grad()
    def refit_residual(self, a_init: torch.Tensor, b_init: torch.Tensor) -> None:
        """Make the base residual agree with loaded initial factors (a no-op when they equal the recomputed
        ones, which is the case on the untouched base with the same numerics)."""
        if torch.equal(a_init, self.lora_A_init) and torch.equal(b_init, self.lora_B_init):
            return
        weight = weight_out_in(self.base_layer)
        old = self.lora_B_init @ self.lora_A_init
        new = b_init.to(old.dtype) @ a_init.to(old.dtype)
        weight.add_((self.scaling * (old - new)).to(weight.dtype))
        self.lora_A_init.copy_(a_init)
        self.lora_B_init.copy_(b_init)

    @property
    def alters_base(self) -> bool:
        return "lora_A_init" in self._buffers

    def adapter_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The initial factors of a residual init (PiSSA, OLoRA): saved, see ``_lora_init.py``."""
        for name in ("lora_A_init", "lora_B_init"):
            if name in self._buffers:
                yield name, self._buffers[name]

    @torch.no_grad()
    def release_base(self) -> nn.Module:
        """Taken off unmerged, a residual init (PiSSA, OLoRA) gives the base its principal part back."""
        if "lora_A_init" in self._buffers:
            weight = weight_out_in(self.base_layer)
            weight.add_((self.scaling * (self.lora_B_init @ self.lora_A_init)).to(weight.dtype))
        return self.base_layer

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(self.lora_A.dtype)
        hidden = F.linear(x, self.lora_A) * self.scaling  # scale the rank-r side, not the wide output
        return add_up_projection(base_output, hidden, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


def inject(model: nn.Module, config: LoRAConfig, layer_class: Callable[..., LoRALinear] = LoRALinear) -> Injection:
    if config.target_parameters:
        find_target_parameters(model, config.target_parameters)  # checked before any module changes
    if config.target_modules:
        for name, module in find_modules(model, config.target_modules):
            layer = layer_class(module, config.rank, config.scaling, config.dropout, config.init)
            replace_module(model, name, layer)
    if config.target_parameters:
        inject_parameters(model, config.target_parameters, config.rank, config.scaling, config.init)
    return Injection()


def import_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load, first refitting each residual-init layer's base to the saved initial factors."""
    if peft_state(model).config.init in RESIDUAL_INITS:
        for name, module in model.named_modules():
            a_init, b_init = tensors.get(f"{name}.lora_A_init"), tensors.get(f"{name}.lora_B_init")
            if isinstance(module, LoRALinear) and a_init is not None and b_init is not None:
                device = module.lora_A_init.device
                module.refit_residual(a_init.to(device), b_init.to(device))
    copy_adapter_tensors(model, tensors)


register(MethodSpec(
    name="lora",
    family="reparameterized",
    config_class=LoRAConfig,
    inject=inject,
    paper="Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models (arXiv 2106.09685)",
    summary="Low-rank update B A beside frozen weights.",
    mergeable=True,
    hooks=MethodHooks(import_state=import_state),
))
