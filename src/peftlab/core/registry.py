"""The one registry: method name -> family, config class, how to apply it.

A method file ends with ``register(MethodSpec(...))``. Nothing else lists methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.errors import UserError

if TYPE_CHECKING:
    from peftlab.core.injection import Injection

Family = Literal["baseline", "additive", "partial", "reparameterized", "hybrid", "unified"]
FAMILIES: tuple[Family, ...] = ("baseline", "additive", "partial", "reparameterized", "hybrid", "unified")
ALL_ARCHITECTURES: tuple[str, ...] = ("bert", "t5", "llama", "gpt2")

InjectFn = Callable[[nn.Module, MethodConfig], "Injection"]


@dataclass(frozen=True)
class MethodSpec:
    """Everything the core needs to know about one method."""

    name: str
    family: Family
    config_class: type[MethodConfig]
    inject: InjectFn
    paper: str
    summary: str
    mergeable: bool = False
    architectures: tuple[str, ...] = ALL_ARCHITECTURES
    # Optional hooks a method supplies when the generic behaviour does not fit it.
    extra: dict[str, Callable] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "summary": self.summary,
            "mergeable": self.mergeable,
            "architectures": list(self.architectures),
            "options": self.config_class.field_help(),
        }


class UnknownMethodError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.family not in FAMILIES:
        raise ValueError(f"{spec.name}: unknown family {spec.family!r}; families are {FAMILIES}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if spec.config_class.method != spec.name:
        raise ValueError(f"{spec.config_class.__name__}.method is {spec.config_class.method!r}, not {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))} (see `peftlab methods`)"
        ) from None


def all_methods() -> list[MethodSpec]:
    """Registered methods, grouped by family in the survey's order."""
    return sorted(_REGISTRY.values(), key=lambda spec: (FAMILIES.index(spec.family), spec.name))


def method_names(family: Family | None = None) -> list[str]:
    return [spec.name for spec in all_methods() if family is None or spec.family == family]


def spec_for_config(config: MethodConfig) -> MethodSpec:
    return get_method(config.method)


def config_class(name: str) -> type[MethodConfig]:
    return get_method(name).config_class


def describe_all(names: Iterable[str] | None = None) -> list[dict[str, object]]:
    chosen = set(names) if names is not None else None
    return [spec.describe() for spec in all_methods() if chosen is None or spec.name in chosen]
