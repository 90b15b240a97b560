"""A method's hooks are typed fields of ``MethodHooks``: a misspelt name fails when the hooks are built,
a value of the wrong kind fails at ``register``, and every registered method's hooks fit their types."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass, fields

import pytest

import peftlab  # noqa: F401  (registers every method)
from peftlab.core.architectures import ARCHITECTURES
from peftlab.core.config import MethodConfig
from peftlab.core.hooks import TrainingHooks
from peftlab.core.registry import (ALL_ARCHITECTURES, MethodHooks, MethodSpec, all_methods, method_names,
                                   register)


@dataclass(frozen=True, kw_only=True)
class ProbeConfig(MethodConfig):
    method = "registry_probe"


def probe_spec(hooks: object) -> MethodSpec:
    return MethodSpec(name="registry_probe", family="additive", config_class=ProbeConfig,
                      inject=lambda model, config: None, paper="none", summary="none",
                      hooks=hooks)  # type: ignore[arg-type]


def test_a_misspelt_hook_name_fails_when_the_hooks_are_built():
    with pytest.raises(TypeError, match="export_sate"):
        MethodHooks(export_sate=lambda model: {})  # type: ignore[call-arg]


def test_hooks_are_keyword_only():
    with pytest.raises(TypeError):
        MethodHooks(lambda model, config: TrainingHooks())  # type: ignore[misc]


@pytest.mark.parametrize("name", [f.name for f in fields(MethodHooks) if f.name != "reuses_kv_cache"])
def test_register_refuses_a_hook_that_is_not_callable(name):
    with pytest.raises(TypeError, match=rf"registry_probe: hook '{name}' must be callable or None, not str"):
        register(probe_spec(MethodHooks(**{name: "not a function"})))
    assert "registry_probe" not in method_names()


def test_register_refuses_a_reuses_kv_cache_that_is_not_a_bool():
    with pytest.raises(TypeError, match="hook 'reuses_kv_cache' must be a bool, not int"):
        register(probe_spec(MethodHooks(reuses_kv_cache=0)))  # type: ignore[arg-type]
    assert "registry_probe" not in method_names()


def test_register_refuses_hooks_given_as_a_mapping():
    with pytest.raises(TypeError, match="hooks must be a MethodHooks, not dict"):
        register(probe_spec({"export_state": lambda model: {}}))
    assert "registry_probe" not in method_names()


def declared_arities() -> dict[str, int]:
    """How many arguments the core passes each hook, read from ``MethodHooks``' annotations."""
    hints = typing.get_type_hints(MethodHooks, localns={"TrainingHooks": TrainingHooks})
    arities = {}
    for name, hint in hints.items():
        if name == "reuses_kv_cache":
            continue
        callable_type, none = typing.get_args(hint)
        assert none is type(None) and typing.get_origin(callable_type) is collections.abc.Callable, name
        arities[name] = len(typing.get_args(callable_type)[0])
    return arities


def test_every_hook_field_is_a_callable_or_none_except_reuses_kv_cache():
    assert set(declared_arities()) | {"reuses_kv_cache"} == {f.name for f in fields(MethodHooks)}


@pytest.mark.parametrize("spec", all_methods(), ids=lambda spec: spec.name)
def test_every_registered_methods_hooks_fit_their_declared_types(spec: MethodSpec):
    assert isinstance(spec.hooks, MethodHooks)
    assert isinstance(spec.hooks.reuses_kv_cache, bool)
    for name, arity in declared_arities().items():
        hook = getattr(spec.hooks, name)
        if hook is None:
            continue
        inspect.signature(hook).bind(*[None] * arity)  # raises TypeError if it takes another number
        if name == "training_hooks" and inspect.isclass(hook):
            assert issubclass(hook, TrainingHooks)



def test_the_architectures_methods_may_name_are_the_families_the_presets_know():
    assert ALL_ARCHITECTURES == tuple(ARCHITECTURES)
    assert all(set(spec.architectures) <= set(ARCHITECTURES) for spec in all_methods())
    assert all(architecture.label for architecture in ARCHITECTURES.values())  # `peftlab methods` prints it


def test_register_refuses_an_unknown_architecture():
    spec = dataclasses.replace(probe_spec(MethodHooks()), architectures=("llama", "mamba"))
    with pytest.raises(ValueError, match=r"registry_probe: unknown architectures \['mamba'\]; known: bert, t5"):
        register(spec)
