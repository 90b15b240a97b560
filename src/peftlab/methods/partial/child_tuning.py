"""Child-Tuning: update only a child network of the pretrained weights (Xu et al. 2021, "Raise a Child
in Large Language Model: Towards Effective and Generalizable Fine-tuning", arXiv 2109.05687).

Each step ``w <- w - lr * (g ⊙ M)`` on the selected (parent) weights, with mask ``M``:

* **F** (task-free): ``M ~ Bernoulli(p)`` drawn anew each step, kept gradients scaled: ``g ⊙ M / p``.
* **D** (task-driven): ``M`` fixed before training, the top ``p`` fraction of entries by Fisher
  information ``F(w) = sum over training batches of (dL/dw)^2``, ranked across all parent weights.

Partial: the method selects whole base weight tensors and masks their gradients; it adds no module.
Entries outside ``M`` are also held in place through the optimizer step, so weight decay and Adam's
momentum cannot move them: the child network is exactly the set of entries a step may change.
The trainable count reported is the child network's size, ``round(p * parent size)``.

The per-step work runs through :mod:`peftlab.core.hooks` (``prepare`` estimates D's Fisher
information, ``before_optimizer_step`` masks, ``after_optimizer_step`` restores). A saved D adapter
holds the child network only (its mask and values); F may change every entry, so it saves the
parent tensors whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.errors import UserError
from peftlab.core.hooks import TrainingHooks
from peftlab.core.method_hooks import training_hooks
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.serialization import AdapterFileError
from peftlab.core.sharding import local, local_slice, whole
from peftlab.core.state import Injection, adapter_parameters, numel_trained_beside_layers, peft_state
from peftlab.core.targeting import find_modules

MASK_SUFFIX = ".child_mask"
VALUES_SUFFIX = ".child_values"


@dataclass(frozen=True, kw_only=True)
class ChildTuningConfig(MethodConfig):
    method = "child_tuning"

    variant: Literal["F", "D"] = option(
        "D", "F: a fresh Bernoulli(reserve_p) gradient mask each step; D: a fixed child network chosen by "
        "Fisher information on training batches (needs the training hooks' prepare)."
    )
    reserve_p: float = option(0.3, "Fraction p of the parent weights in the child network (the paper uses 0.1-0.3).")
    target_modules: tuple[str, ...] = option(
        ("all_linear",), "Layers whose weights and biases form the parent network: presets or module patterns."
    )
    seed: int = option(0, "Seed of F's mask generator (its state is checkpointed for an exact resume).")

    def validate(self) -> None:
        require(0.0 < self.reserve_p <= 1.0, self, "reserve_p", "must be in (0, 1]")


class ChildTuningError(UserError, RuntimeError):
    pass


def parent_owners(model: nn.Module, config: ChildTuningConfig) -> dict[str, tuple[nn.Module, str]]:
    """The module and attribute name of every parent weight, by the weight's name in ``model``."""
    return {f"{module_name}.{name}": (module, name)
            for module_name, module in find_modules(model, config.target_modules)
            for name, _ in module.named_parameters(recurse=False)}


def held_by(owners: dict[str, tuple[nn.Module, str]]) -> dict[str, nn.Parameter]:
    """The parameters the owners hold now, by name."""
    return {name: getattr(module, attribute) for name, (module, attribute) in owners.items()}


def parent_parameters(model: nn.Module, config: ChildTuningConfig) -> dict[str, nn.Parameter]:
    """The weights (and biases) of the target modules, by their names in ``model``."""
    return held_by(parent_owners(model, config))


def child_size(parent_numel: int, reserve_p: float) -> int:
    return max(1, round(reserve_p * parent_numel))


class _ChildTuningHooks(TrainingHooks):
    """Shared masking: gradients masked before the step, entries outside the mask restored after it. Masks
    cover whole weights; under FSDP2 each rank applies the slice that lines up with its shard."""

    def __init__(self, model: nn.Module, config: ChildTuningConfig) -> None:
        self.config = config
        self._owners = parent_owners(model, config)
        self.masks: dict[str, torch.Tensor] | None = None
        self._held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        """The parent weights as the model holds them now (FSDP2 swaps in sharded ones after the hooks exist)."""
        return held_by(self._owners)

    def _step_masks(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _gradient_scale(self) -> float:
        return 1.0

    @torch.no_grad()
    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        masks = self._step_masks()
        scale = self._gradient_scale()
        for name, parameter in self.parameters.items():
            mask = local_slice(masks[name], parameter)
            if parameter.grad is not None:
                local(parameter.grad).mul_(mask).mul_(scale)
            self._held[name] = (mask, local(parameter.detach())[~mask])

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if not self._held:
            raise ChildTuningError(
                "Child-Tuning's after_optimizer_step ran without before_optimizer_step; "
                "call both around optimizer.step()"
            )
        for name, parameter in self.parameters.items():
            mask, held = self._held.pop(name)
            local(parameter.detach())[~mask] = held


class ChildTuningF(_ChildTuningHooks):
    """A fresh Bernoulli(p) mask each step from a seeded generator (checkpointed for an exact resume)."""

    def __init__(self, model: nn.Module, config: ChildTuningConfig) -> None:
        super().__init__(model, config)
        self.generator = torch.Generator().manual_seed(config.seed)

    def _step_masks(self) -> dict[str, torch.Tensor]:
        self.masks = {
            name: (torch.rand(p.shape, generator=self.generator) < self.config.reserve_p).to(p.device)
            for name, p in self.parameters.items()
        }
        return self.masks

    def _gradient_scale(self) -> float:
        return 1.0 / self.config.reserve_p

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator_state"])


class ChildTuningD(_ChildTuningHooks):
    """A fixed child network: the top-p entries by Fisher information, chosen in :meth:`prepare`."""

    def __init__(self, model: nn.Module, config: ChildTuningConfig) -> None:
        super().__init__(model, config)
        self._outside_sums: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> None:
        """Estimate the Fisher information on ``batches`` and fix the child network; clears all gradients."""
        fisher = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                  for name, p in self.parameters.items()}
        device = next(iter(self.parameters.values())).device
        seen = 0
        with torch.enable_grad():
            for batch in batches:
                model.zero_grad(set_to_none=True)
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                model(**inputs).loss.backward()
                for name, parameter in self.parameters.items():
                    if parameter.grad is not None:
                        fisher[name] += whole(parameter.grad).detach().float().square()
                seen += 1
        model.zero_grad(set_to_none=True)
        if seen == 0:
            raise ChildTuningError("Child-Tuning D's prepare got no batches; pass training batches with labels")
        scores = torch.cat([f.flatten() for f in fisher.values()])
        chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        chosen[torch.topk(scores, child_size(scores.numel(), self.config.reserve_p)).indices] = True
        masks, start = {}, 0
        for name, parameter in self.parameters.items():
            masks[name] = chosen[start:start + parameter.numel()].view(parameter.shape)
            start += parameter.numel()
        self.set_masks(masks)

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Fix the child network; fingerprints the entries outside it so a save can verify they never moved."""
        self.masks = {name: masks[name].to(device=p.device, dtype=torch.bool) for name, p in self.parameters.items()}
        self._outside_sums = self._outside_fingerprint()

    def _outside_fingerprint(self) -> dict[str, torch.Tensor]:
        return {name: whole(p).detach()[~self.masks[name]].double().sum() for name, p in self.parameters.items()}

    def check_outside_unchanged(self) -> None:
        moved = [name for name, value in self._outside_fingerprint().items()
                 if not torch.equal(value, self._outside_sums[name])]
        if moved:
            raise ChildTuningError(
                f"weights outside Child-Tuning D's child network changed ({', '.join(moved[:3])}...): the model was "
                f"trained without the method's hooks. Call peftlab.training_hooks(model).before_optimizer_step / "
                f"after_optimizer_step around each optimizer.step()"
            )

    def _step_masks(self) -> dict[str, torch.Tensor]:
        if self.masks is None:
            raise ChildTuningError(
                "Child-Tuning D has no child network yet: call peftlab.training_hooks(model).prepare(model, batches) "
                "with training batches before the first step (or use variant='F')"
            )
        return self.masks

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.masks is None else {f"mask.{name}": mask for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.set_masks({name: state[f"mask.{name}"] for name in self.parameters})


def make_hooks(model: nn.Module, config: ChildTuningConfig) -> TrainingHooks:
    return ChildTuningF(model, config) if config.variant == "F" else ChildTuningD(model, config)


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors, except that a fixed child network (D) is saved as its mask and its values only."""
    tensors = {name: p.detach() for name, p in adapter_parameters(model)}
    hooks = training_hooks(model)
    if isinstance(hooks, ChildTuningD) and hooks.masks is not None:
        hooks.check_outside_unchanged()
        for name, parameter in hooks.parameters.items():
            mask = hooks.masks[name]
            del tensors[name]
            tensors[name + MASK_SUFFIX] = mask
            tensors[name + VALUES_SUFFIX] = parameter.detach()[mask]
    return tensors


@torch.no_grad()
def import_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    trained = dict(adapter_parameters(model))
    child = {name[: -len(MASK_SUFFIX)] for name in tensors if name.endswith(MASK_SUFFIX)}
    expected = {name + suffix for name in child for suffix in (MASK_SUFFIX, VALUES_SUFFIX)}
    expected |= set(trained) - child
    if child - set(trained) or expected != set(tensors):
        difference = sorted(expected.symmetric_difference(tensors) | (child - set(trained)))
        raise AdapterFileError(f"the Child-Tuning adapter does not fit this model (tensors {difference[:5]} differ); "
                               f"was it trained on another base model or with other target modules?")
    masks = {}
    for name, parameter in trained.items():
        if name in child:
            mask, values = tensors[name + MASK_SUFFIX].bool(), tensors[name + VALUES_SUFFIX]
            if mask.shape != parameter.shape or values.numel() != int(mask.sum()):
                raise AdapterFileError(f"the Child-Tuning adapter's {name} has shape {tuple(mask.shape)}, "
                                       f"the model's {tuple(parameter.shape)}: another base model?")
            mask = mask.to(parameter.device)
            parameter.data[mask] = values.to(device=parameter.device, dtype=parameter.dtype)
            masks[name] = mask
        else:
            if tensors[name].shape != parameter.shape:
                raise AdapterFileError(f"the Child-Tuning adapter's {name} has shape {tuple(tensors[name].shape)}, "
                                       f"the model's {tuple(parameter.shape)}: another base model?")
            parameter.copy_(tensors[name].to(device=parameter.device, dtype=parameter.dtype))
    hooks = training_hooks(model)
    if masks and isinstance(hooks, ChildTuningD):
        hooks.set_masks(masks)


def inject(model: nn.Module, config: ChildTuningConfig) -> Injection:
    parents = list(parent_parameters(model, config))

    def count_trainable(adapted: nn.Module) -> int:
        named = dict(adapted.named_parameters())
        parent_numel = sum(named[name].numel() for name in parents)
        others = numel_trained_beside_layers(adapted, peft_state(adapted)) - parent_numel
        return child_size(parent_numel, config.reserve_p) + others

    return Injection(selected=list(parents), count_trainable=count_trainable,
                     count_note="the child network: reserve_p of the selected weights")


register(MethodSpec(
    name="child_tuning",
    family="partial",
    config_class=ChildTuningConfig,
    inject=inject,
    paper="Xu et al. 2021, Raise a Child in Large Language Model (arXiv 2109.05687)",
    summary="Only a child network of the weights trains: a Bernoulli gradient mask (F) or a Fisher-chosen one (D).",
    mergeable=True,
    hooks=MethodHooks(training_hooks=make_hooks, export_state=export_state, import_state=import_state),
))
