"""LoRA on a parameter rather than a linear module (LoRA's ``target_parameters``, as peft's).

Mixture-of-experts models in transformers 5 (Mixtral, Qwen2/3-MoE, GPT-OSS, ...) keep their experts as 3-D
``nn.Parameter`` s, one matrix per expert (``mlp.experts.gate_up_proj``, ``down_proj``), used inside the
experts' own forward, so there is no ``nn.Linear`` to wrap. Each targeted parameter ``W`` gets its own update
per expert ``e``::

    W_e  <-  W_e + s * B_e A_e        A: (E, r, in), B: (E, out, r), s = alpha / r (or alpha / sqrt(r))

``W`` is ``(E, out, in)``, or ``(E, in, out)`` when the experts module says ``is_transposed`` (GPT-OSS; the
update is then transposed per expert); a 2-D parameter is one ``(out, in)`` matrix (``E = 1``). ``A`` starts
Kaiming-uniform over each ``(r, in)`` block's fan-in (``in``), ``B`` at zero, so the model starts as the base.

How the update reaches the experts' code (which is not copied): :class:`LoRAParameter` wraps the module that
owns ``W`` and runs it with ``W`` replaced, for that one call, by ``W + s B A`` (one ``baddbmm``), through
``torch.func.functional_call``. Chosen over the alternatives because:

* gradients are exact: autograd sees the module consume ``W + s B A``, so ``A`` and ``B`` get
  ``dL/dW_eff`` through the ``baddbmm`` and the frozen ``W`` gets none;
* memory is one ``W``-sized temporary per adapted parameter and forward (the expert matmuls keep it for
  backward, as they keep ``W`` itself); the factors are never expanded to ``(E, out, in)`` on their own;
* a permanent ``torch.nn.utils.parametrize`` parametrization would rename ``W`` in the state dict
  (``parametrizations.W.original``, so ``save_pretrained`` and the frozen-base checks change) and recompute the
  sum at every attribute read; a forward pre-hook would need its own restore on errors; the swap is undone
  when the call returns or raises, and nested wrappers (two parameters of one module, or two adapters)
  compose, each adding its update to what the wrapper outside it put in.

Several parameters of one module nest one wrapper each, in the module's parameter order (the last one
outermost), as peft does, so module names (``experts``, ``experts.base_layer``) and peft's keys agree.
The rows of a batch are not the experts' rows (tokens), so a mixed-adapter batch is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from peftlab.core.layers import AdapterLayer, AdapterModule, innermost, tensor_options
from peftlab.core.targeting import TargetError, pattern_regex, replace_module

SUPPORTED_DIMENSIONS = (2, 3)


class LoRAParameter(AdapterLayer):
    """The owner of ``W`` run with ``W + s * B A`` in its place (per expert for a 3-D ``W``)."""

    mergeable = True
    routes_rows = False  # the wrapped experts see tokens, not the batch's rows

    def __init__(self, base_layer: nn.Module, parameter_name: str, rank: int, scaling: float,
                 init: str = "kaiming") -> None:
        AdapterModule.__init__(self)
        self.base_layer = base_layer
        self.parameter_name = parameter_name
        self.merged = False
        self.scaling = scaling
        weight = self._parameter()
        self.transposed = weight.dim() == 3 and bool(getattr(innermost(base_layer), "is_transposed", False))
        experts = weight.shape[0] if weight.dim() == 3 else 1
        rows, columns = weight.shape[-2:]
        self.out_features, self.in_features = (columns, rows) if self.transposed else (rows, columns)
        factory = tensor_options(weight)
        self.lora_A = nn.Parameter(torch.empty(experts, rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(experts, self.out_features, rank, **factory))
        flat = self.lora_A.data.view(experts * rank, self.in_features)  # fan-in = in, as for one (r, in) matrix
        if init == "gaussian":
            nn.init.normal_(flat, std=1.0 / rank)
        else:
            nn.init.kaiming_uniform_(flat, a=math.sqrt(5))

    def _parameter(self) -> torch.Tensor:
        return getattr(innermost(self.base_layer), self.parameter_name)

    def _path(self) -> str:
        """``W``'s name relative to ``base_layer`` (through any nested wrappers)."""
        path, module = self.parameter_name, self.base_layer
        while isinstance(module, AdapterLayer):
            path, module = f"base_layer.{path}", module.base_layer
        return path

    @property
    def weight(self) -> torch.Tensor:
        return self._parameter()

    def _updated(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + s B A`` in ``weight``'s dtype and layout, as one fused multiply-add."""
        a, b = self.lora_A.to(weight.dtype), self.lora_B.to(weight.dtype)
        lhs, rhs = (a.mT, b.mT) if self.transposed else (b, a)  # (E, out, in) or (E, in, out)
        if weight.dim() == 2:
            return torch.addmm(weight, lhs[0], rhs[0], alpha=self.scaling)
        return torch.baddbmm(weight, lhs, rhs, alpha=self.scaling)

    def adapted_forward(self, *args, **kwargs):
        """``base_layer(*args)`` with ``W`` replaced by ``W + s B A`` for this call only."""
        if self.merged:
            return self.base_layer(*args, **kwargs)
        replaced = {self._path(): self._updated(self._parameter())}
        return functional_call(self.base_layer, replaced, args, kwargs, tie_weights=False, strict=False)

    def delta_weight(self) -> torch.Tensor:
        """``s B A`` in ``W``'s layout."""
        weight = self._parameter()
        return self._updated(torch.zeros_like(weight, dtype=self.lora_A.dtype))

    def known_inert(self) -> bool:
        return not (bool(self.lora_B.any()) and bool(self.lora_A.any()))

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self._parameter()
            weight.add_(self.delta_weight().to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self._parameter()
            weight.sub_(self.delta_weight().to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"parameter_name={self.parameter_name!r}"


def find_target_parameters(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, str]]:
    """``(module name, parameter name)`` for each parameter whose full name (wrappers left out) matches a
    pattern as a whole dotted suffix (``gate_up_proj``, ``experts\\.down_proj``); in the model's module order,
    a module's parameters in their own order. Each pattern must match a 2-D or 3-D parameter."""
    regexes = {pattern: pattern_regex(pattern) for pattern in patterns}
    found: list[tuple[str, str]] = []
    hits = dict.fromkeys(patterns, 0)
    for module_name, module in _plain_modules(model):
        for parameter_name, parameter in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}" if module_name else parameter_name
            matched = [p for p, regex in regexes.items() if regex.fullmatch(full)]
            if not matched:
                continue
            if parameter.dim() not in SUPPORTED_DIMENSIONS:
                raise TargetError(
                    f"target_parameters {matched[0]!r} matches {full} of shape {tuple(parameter.shape)}: LoRA adapts "
                    f"a 2-D (out, in) matrix or a 3-D (experts, out, in) stack only; narrow the pattern"
                )
            if not module_name:
                raise TargetError(f"target_parameters {matched[0]!r} matches {full}, a parameter of the model "
                                  f"itself; target a parameter of one of its submodules")
            for pattern in matched:
                hits[pattern] += 1
            found.append((module_name, parameter_name))
    missing = [pattern for pattern, count in hits.items() if not count]
    if missing:
        raise TargetError(f"target_parameters {missing[0]!r} matches no parameter (those of layers that "
                          f"target_modules adapts are not searched). {_inventory(model)}")
    return found


def inject_parameters(model: nn.Module, patterns: Sequence[str], rank: int, scaling: float, init: str) -> int:
    """Wrap the owner of each matched parameter (nesting for several of one owner); the number wrapped."""
    targets = find_target_parameters(model, patterns)
    for module_name, parameter_name in targets:
        owner = model.get_submodule(module_name)
        replace_module(model, module_name, LoRAParameter(owner, parameter_name, rank, scaling, init))
    return len(targets)


def _plain_modules(model: nn.Module):
    """Every base module, named without the wrappers (``experts``, not ``experts.base_layer``): an adapter
    (a LoRA wrapper of a linear layer, whose base is adapted already) ends the walk, a :class:`LoRAParameter`
    does not (its owner's other parameters, or another adapter's, can still be targeted)."""
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if isinstance(module, LoRAParameter):
            stack.append((name, module.base_layer))
            continue
        if isinstance(module, AdapterModule):
            continue
        yield name, module
        for child_name, child in reversed(list(module._modules.items())):
            if child is not None:
                stack.append((f"{name}.{child_name}" if name else child_name, child))


def _inventory(model: nn.Module) -> str:
    shapes: dict[str, tuple[int, ...]] = {}
    for module_name, module in _plain_modules(model):
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if parameter.dim() in SUPPORTED_DIMENSIONS:
                full = re.sub(r"\.\d+\.", ".N.", f"{module_name}.{parameter_name}")
                shapes.setdefault(full, tuple(parameter.shape))
    listing = ", ".join(f"{name} {shape}" for name, shape in list(shapes.items())[:40])
    return f"The model's 2-D and 3-D parameters: {listing or 'none'}."
