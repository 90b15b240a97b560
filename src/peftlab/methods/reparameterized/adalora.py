"""AdaLoRA: LoRA in SVD form whose rank budget moves to the layers that matter (Zhang et al. 2023,
"Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", arXiv 2303.10512).

``y = W x + (alpha / r0) P diag(m ⊙ λ) Q x`` with ``P`` (out x r0), ``λ`` (r0), ``Q`` (r0 x in) and a
rank mask ``m``; ``λ`` starts at zero (the model starts equal to the base), ``P`` and ``Q`` Gaussian.

Importance of triplet ``i`` (Eq. 10): ``S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij)`` with
``s = Ī · Ū``, ``I(w) = |w ∂L/∂w|``, ``Ī <- β1 Ī + (1 - β1) I``, ``Ū <- β2 Ū + (1 - β2) |I - Ī|``.
Budget after ``t`` optimizer steps (Eq. 11): ``b0`` for ``t <= t_init``; then
``b_T + (b0 - b_T) (1 - (t - t_init) / (T - t_init - t_final))^3``, reallocated every ``delta_t`` steps by
keeping the ``b(t)`` triplets of highest importance across all layers; ``b_T`` from ``T - t_final`` on,
with the masks fixed (final fine-tuning). Masked ``λ`` are held at zero.
Orthogonality (Eq. 4): ``γ mean_k (||P_kᵀ P_k - I||²_F + ||Q_k Q_kᵀ - I||²_F)`` added to the loss. (HF peft
adds ``γ`` times the mean of the unsquared norms instead, so the same ``γ`` weighs less there: at the start,
on the benchmark's SmolLM2 shape with r0 = 12 on q and v, the term is 1.58 here and 0.28 in peft, the 1.3
by which the two libraries' first losses differ.)
Mergeable: ``W <- W + (alpha / r0) P diag(m ⊙ λ) Q``. Per-step work runs through :mod:`peftlab.core.hooks`.
The per-layer ranks are :func:`rank_pattern` (``peftlab.rank_pattern``); a saved adapter's
``adapter_config.json`` carries them under ``report``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.hooks import TrainingHooks
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.sharding import local, local_slice, whole
from peftlab.core.state import Injection, numel_trained_beside_layers, peft_state
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized._adalora_layers import SVDLinear, StackedOrthogonality, svd_layers


@dataclass(frozen=True, kw_only=True)
class AdaLoRAConfig(MethodConfig):
    method = "adalora"

    total_steps: int = option(0, "T: the number of optimizer steps the run will take (required: the budget schedule needs it).")
    init_rank: int = option(12, "Initial rank r0 of every adapted layer (the initial budget is r0 x layers).")
    target_rank: int = option(8, "Average rank per layer at the end (the target budget is this x layers).")
    alpha: float = option(32.0, "Scale numerator: the update is multiplied by alpha / init_rank.")
    dropout: float = option(0.0, "Dropout on the adapter's input.")
    target_modules: tuple[str, ...] = option(("all_linear",), "Linear layers to adapt: presets or module patterns.")
    t_init: int = option(0, "Warm-up steps at the initial budget before any pruning.")
    t_final: int = option(0, "Final fine-tuning steps at the target budget with the rank masks fixed.")
    delta_t: int = option(1, "Reallocate the budget every delta_t steps during the decrease.")
    beta1: float = option(0.85, "EMA coefficient of the sensitivity (Ī).")
    beta2: float = option(0.85, "EMA coefficient of the uncertainty (Ū).")
    orth_reg_weight: float = option(0.1, "γ: weight of the orthogonality regularisation of P and Q.")

    def validate(self) -> None:
        require(self.init_rank > 0, self, "init_rank", "must be a positive integer")
        require(0 < self.target_rank <= self.init_rank, self, "target_rank", "must be in [1, init_rank]")
        require(self.t_init >= 0, self, "t_init", "must be >= 0")
        require(self.t_final >= 0, self, "t_final", "must be >= 0")
        require(self.total_steps > self.t_init + self.t_final, self, "total_steps",
                "must exceed t_init + t_final: set it to the number of optimizer steps you will train")
        require(self.delta_t > 0, self, "delta_t", "must be a positive integer")
        require(0.0 <= self.beta1 < 1.0, self, "beta1", "must be in [0, 1)")
        require(0.0 <= self.beta2 < 1.0, self, "beta2", "must be in [0, 1)")
        require(self.orth_reg_weight >= 0, self, "orth_reg_weight", "must be >= 0")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "must be in [0, 1)")
        require(self.alpha > 0, self, "alpha", "must be positive")

    def budget(self, layers: int, steps_done: int) -> int:
        """b(t): the total rank after ``steps_done`` optimizer steps."""
        initial, target = self.init_rank * layers, self.target_rank * layers
        if steps_done <= self.t_init:
            return initial
        if steps_done >= self.total_steps - self.t_final:
            return target
        progress = (steps_done - self.t_init) / (self.total_steps - self.t_init - self.t_final)
        return int(target + (initial - target) * (1 - progress) ** 3)


def rank_pattern(model: nn.Module) -> dict[str, int]:
    """The current rank of every AdaLoRA layer by module name (after training: the final per-layer ranks);
    empty for a model without AdaLoRA."""
    return {name: int(layer.rank_mask.sum()) for name, layer in svd_layers(model)}


def total_rank(model: nn.Module) -> int:
    return sum(rank_pattern(model).values())


def report(model: nn.Module) -> dict[str, Any]:
    """What ``save_adapter`` writes under ``report`` in ``adapter_config.json``."""
    pattern = rank_pattern(model)
    return {"rank_pattern": pattern, "total_rank": sum(pattern.values())}


@dataclass
class FactorStack:
    """One factor (``svd_P``, ``svd_lambda`` or ``svd_Q``) of every layer in a same-shape group, with its two
    moving averages stacked along a leading layer axis, so each update is a few ops, not a few per layer."""

    parameters: list[nn.Parameter]
    average: torch.Tensor  # Ī, (layers, *factor shape), float32
    uncertainty: torch.Tensor  # Ū, same shape


class AdaLoRAHooks(TrainingHooks):
    """Importance tracking and budget allocation after each optimizer step; the orthogonality penalty."""

    def __init__(self, model: nn.Module, config: AdaLoRAConfig) -> None:
        self.config = config
        self.layers = svd_layers(model)
        by_shape: dict[tuple[torch.Size, torch.Size], list[int]] = {}
        for index, (_, layer) in enumerate(self.layers):
            by_shape.setdefault((layer.svd_P.shape, layer.svd_Q.shape), []).append(index)
        self.same_shape_groups = list(by_shape.values())  # indices into ``layers``; stacked by every step's work
        self.stacks: dict[tuple[int, str], FactorStack] = {}  # (group, factor), built at the first update
        self.average: dict[str, torch.Tensor] = {}  # by factor name: views into the stacks
        self.uncertainty: dict[str, torch.Tensor] = {}

    def regularization(self, model: nn.Module) -> torch.Tensor | float:
        """``γ`` times the mean orthogonality term; the layers whose factors have one shape (q and v of every
        block, say) are stacked and computed in one batched product, not two small ones per layer."""
        if self.config.orth_reg_weight == 0:
            return 0.0
        total = sum(StackedOrthogonality.apply(*[whole(self.layers[i][1].svd_P) for i in group],
                                               *[whole(self.layers[i][1].svd_Q) for i in group])
                    for group in self.same_shape_groups)
        return self.config.orth_reg_weight * total / len(self.layers)

    def _build_stacks(self) -> None:
        """The stacks, once, on the factors' device (the model may have moved since the hooks were made)."""
        if self.stacks:
            return
        for group_index, group in enumerate(self.same_shape_groups):
            for factor in ("svd_P", "svd_lambda", "svd_Q"):
                names = [f"{self.layers[i][0]}.{factor}" for i in group]
                parameters = [getattr(self.layers[i][1], factor) for i in group]
                zeros = torch.zeros(len(group), *parameters[0].shape, device=parameters[0].device)
                stack = FactorStack(parameters, zeros, zeros.clone())
                self.stacks[group_index, factor] = stack
                for position, name in enumerate(names):
                    self.average[name], self.uncertainty[name] = stack.average[position], stack.uncertainty[position]

    @torch.no_grad()
    def update_importance(self) -> None:
        """Both moving averages of every factor, on the stacks (``Ī``, ``Ū`` of Eq. 10's ``s``)."""
        self._build_stacks()
        beta1, beta2 = self.config.beta1, self.config.beta2
        for stack in self.stacks.values():
            weights = [whole(p) for p in stack.parameters]
            gradients = [whole(p.grad) if p.grad is not None else torch.zeros_like(w)
                         for p, w in zip(stack.parameters, weights)]
            sensitivity = torch.stack(weights).mul_(torch.stack(gradients)).abs_().float()
            stack.average.lerp_(sensitivity, 1 - beta1)  # β1 Ī + (1 - β1) I
            stack.uncertainty.lerp_(sensitivity.sub_(stack.average).abs_(), 1 - beta2)

    def _score(self, group_index: int, factor: str) -> torch.Tensor:
        """``s = Ī · Ū`` of one factor across a shape group."""
        stack = self.stacks[group_index, factor]
        return stack.average * stack.uncertainty

    def triplet_importance(self) -> list[torch.Tensor]:
        """``S_i`` for every layer's triplets (Eq. 10), in ``layers`` order (zeros before any update)."""
        self._build_stacks()
        scores: list[torch.Tensor] = [torch.empty(0)] * len(self.layers)
        for group_index, group in enumerate(self.same_shape_groups):
            per_layer = (self._score(group_index, "svd_lambda") + self._score(group_index, "svd_P").mean(1)
                         + self._score(group_index, "svd_Q").mean(2))  # (layers, r0)
            for index, row in zip(group, per_layer):
                scores[index] = row
        return scores

    @torch.no_grad()
    def allocate(self, budget: int) -> None:
        """Keep the ``budget`` triplets of highest importance across all layers; zero the others' λ."""
        flat = torch.cat(self.triplet_importance()).cpu()
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.topk(flat, budget).indices] = True
        masks = [layer.rank_mask for _, layer in self.layers]
        torch._foreach_copy_(masks, list(keep.split([mask.numel() for mask in masks])))

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        config, steps_done = self.config, step + 1
        final = config.total_steps - config.t_final
        if steps_done <= final:
            self.update_importance()
        reallocate = steps_done > config.t_init and ((steps_done - config.t_init) % config.delta_t == 0)
        if (steps_done < final and reallocate) or steps_done == final:
            self.allocate(config.budget(len(self.layers), steps_done))
        self.hold_masked_at_zero()

    @torch.no_grad()
    def hold_masked_at_zero(self) -> None:
        """``λ <- m ⊙ λ`` for every layer; an FSDP2-sharded ``λ`` by the slice of its (whole) mask it holds."""
        lambdas = [layer.svd_lambda for _, layer in self.layers]
        torch._foreach_mul_([local(value) for value in lambdas],
                            [local_slice(layer.rank_mask, value) for (_, layer), value in zip(self.layers, lambdas)])

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"average.{n}": t.clone() for n, t in self.average.items()}  # updated in place every step
        state.update({f"uncertainty.{n}": t.clone() for n, t in self.uncertainty.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        self._build_stacks()
        targets = []
        for key, tensor in state.items():  # every name checked before any average changes
            kind, _, name = key.partition(".")
            averages = self.average if kind == "average" else self.uncertainty
            if name not in averages:
                raise ValueError(f"AdaLoRA importance state names {name!r}, which this model has no AdaLoRA factor "
                                 "for: resume with the model and adapter options the checkpoint was made with")
            targets.append((averages[name], tensor))
        for average, tensor in targets:
            average.copy_(tensor)


def inject(model: nn.Module, config: AdaLoRAConfig) -> Injection:
    scaling = config.alpha / config.init_rank
    for name, module in find_modules(model, config.target_modules):
        replace_module(model, name, SVDLinear(module, config.init_rank, scaling, config.dropout))

    def count_trainable(adapted: nn.Module) -> int:
        """Active triplets only: a masked rank no longer counts."""
        active = sum(int(layer.rank_mask.sum()) * (layer.in_features + layer.out_features + 1)
                     for _, layer in svd_layers(adapted))
        return active + numel_trained_beside_layers(adapted, peft_state(adapted))

    return Injection(count_trainable=count_trainable, count_note="active rank triplets only")


register(MethodSpec(
    name="adalora",
    family="reparameterized",
    config_class=AdaLoRAConfig,
    inject=inject,
    paper="Zhang et al. 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (arXiv 2303.10512)",
    summary="LoRA in SVD form; importance-driven pruning moves the rank budget between layers.",
    mergeable=True,
    hooks=MethodHooks(training_hooks=AdaLoRAHooks, report=report),
))
