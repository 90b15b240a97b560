"""Choose modules by name: preset names (per architecture, in ``architectures.py``) or regex patterns.

A pattern matches a module when it matches a whole dotted suffix of the module's name:
``query`` matches ``bert.encoder.layer.0.attention.self.query``. A pattern that matches nothing,
or an unknown preset, is an error that lists what the model has.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftlab.core.architectures import PRESET_NAMES, Architecture, architecture_of
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterLayer, AdapterModule

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D, AdapterLayer)


class TargetError(UserError, ValueError):
    """A target pattern is unknown or matches nothing; the message lists the model's modules."""


def expand_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Preset names become their patterns for this model's architecture; patterns pass through."""
    entries = [targets] if isinstance(targets, str) else list(targets)
    if not entries:
        raise TargetError("no target modules given; pass a preset name or module name patterns")

    def unknown_architecture(preset: str) -> TargetError:
        return TargetError(
            f"preset {preset!r} is defined for bert/roberta, t5, llama and gpt2 only; "
            f"this model is {getattr(model.config, 'model_type', type(model).__name__)!r}: "
            f"give module name patterns instead. {_inventory(model)}"
        )

    return expand_presets(entries, architecture_of(model), unknown_architecture)


def expand_presets(entries: Sequence[str], architecture: Architecture | None,
                   unknown_architecture: Callable[[str], Exception]) -> list[str]:
    """Preset names become ``architecture``'s patterns (``unknown_architecture(preset)`` is raised when there
    is none); the other entries are regex patterns, checked and passed through."""
    patterns: list[str] = []
    for entry in entries:
        if entry in PRESET_NAMES:
            if architecture is None:
                raise unknown_architecture(entry)
            patterns.extend(architecture.presets[entry])
        else:
            pattern_regex(entry)
            patterns.append(entry)
    return patterns


def find_modules(
    model: nn.Module,
    targets: str | Sequence[str],
    types: tuple[type[nn.Module], ...] = LINEAR_TYPES,
    *,
    role: str = "target",
) -> list[tuple[str, nn.Module]]:
    """Every module of one of ``types`` matched by ``targets``; each pattern must match something.

    ``role`` names the patterns in the error (``"target"``, ``"modules_to_save pattern"``).
    """
    patterns = expand_targets(model, targets)
    candidates = [(name, module) for name, module in _named_base_modules(model) if isinstance(module, types)]
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        regex = pattern_regex(pattern)
        hits = [(name, module) for name, module in candidates if _matches(regex, name)]
        if not hits:
            raise TargetError(f"{role} {pattern!r} matches no {_kind(types)}. {_inventory(model, types)}")
        chosen.update(hits)
    return [(name, chosen[name]) for name, _ in candidates if name in chosen]


def find_parameters(model: nn.Module, patterns: Sequence[str], *, role: str = "target") -> list[str]:
    """Names of the parameters of the modules matched by ``patterns`` (any module type)."""
    names: list[str] = []
    for module_name, module in find_modules(model, patterns, types=(nn.Module,), role=role):
        names.extend(f"{module_name}.{p}" for p, _ in module.named_parameters())
    return list(dict.fromkeys(names))


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new_module)


def _named_base_modules(model: nn.Module):
    """Modules of the base model, adapter wrappers included, but nothing inside an adapter."""
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if name:
            yield name, module
        if isinstance(module, AdapterModule):
            continue
        for child_name, child in reversed(list(module._modules.items())):
            if child is not None:
                stack.append((f"{name}.{child_name}" if name else child_name, child))


def _kind(types: tuple[type[nn.Module], ...]) -> str:
    """What the patterns were looking for, in words: ``module``, ``linear layer``, ``Embedding module``."""
    if nn.Module in types:
        return "module"
    if set(LINEAR_TYPES) <= set(types):
        return "linear layer (nn.Linear or GPT-2 Conv1D)"
    return " or ".join(t.__name__ for t in types) + " module"


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regex that matches a module name whose whole dotted suffix ``pattern`` matches (use ``fullmatch``)."""
    try:
        return re.compile(rf"(?:.*\.)?(?:{pattern})")
    except re.error as error:
        raise TargetError(f"target pattern {pattern!r} is not a valid regular expression: {error}") from None


def _matches(regex: re.Pattern[str], name: str) -> bool:
    return regex.fullmatch(name) is not None


def _inventory(model: nn.Module, types: tuple[type[nn.Module], ...] = LINEAR_TYPES) -> str:
    """A compact list of the model's module names (layer numbers folded) and the presets."""
    shapes = Counter(
        re.sub(r"\.\d+\.", ".N.", name) for name, module in _named_base_modules(model) if isinstance(module, types)
    )
    listing = ", ".join(f"{name} (x{count})" if count > 1 else name for name, count in shapes.items())
    architecture = architecture_of(model)
    presets = f" Presets for {architecture.name}: {', '.join(architecture.presets)}." if architecture else ""
    return f"The model's modules: {listing or 'none'}.{presets}"
