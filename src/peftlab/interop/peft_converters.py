"""What a converter between a peftlab method and its HF peft form is, the registry of them, and the
helpers converters share: type-checked peft config fields, refusing options peftlab cannot reproduce, and
target patterns resolved without a model.

A converter lives in ``interop/peft_methods/<method>.py`` and ends with ``register_converter(...)``;
``interop/peft_format.py`` does everything that is the same for every method.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from peftlab.core.architectures import ARCHITECTURES, MODEL_TYPES
from peftlab.core.config import MethodConfig
from peftlab.core.serialization import CONFIG_NAME, AdapterFileError
from peftlab.core.targeting import expand_presets, pattern_regex

PREFIX = "base_model.model."
# Model families whose linear layers are GPT-2's Conv1D (weights stored in x out): peft's fan_in_fan_out.
CONV1D_MODEL_TYPES = frozenset({"gpt2"})

Grouped = dict[str, dict[str, torch.Tensor]]  # module name -> weight name -> tensor


class UnsupportedPeftAdapter(AdapterFileError):
    """A peft adapter (or a peftlab one bound for peft) uses a feature the other side lacks."""


@dataclass(frozen=True)
class PeftConverter:
    """How one method's adapter maps to and from peft's.

    ``weights``: the method's tensor names in peftlab (relative to their module); ``peft_weights``: in peft.
    ``to_peft(config, grouped, base)`` returns peft's config fields and its grouped tensors;
    ``from_peft(document, grouped)`` returns the peftlab config and grouped tensors.
    ``claims(document)`` picks this converter among those sharing a ``peft_type`` (e.g. DoRA's use_dora).
    """

    method: str
    peft_type: str
    weights: tuple[str, ...]
    peft_weights: tuple[str, ...]
    to_peft: Callable[[MethodConfig, Grouped, dict[str, Any]], tuple[dict[str, Any], Grouped]]
    from_peft: Callable[[dict[str, Any], Grouped], tuple[MethodConfig, Grouped]]
    claims: Callable[[dict[str, Any]], bool] = lambda document: True
    prefix: str = PREFIX  # prompt-learning methods: peft's model is not wrapped, names start "base_model."


_CONVERTERS: dict[str, PeftConverter] = {}


def register_converter(converter: PeftConverter) -> PeftConverter:
    _CONVERTERS[converter.method] = converter
    return converter


def converter_for_method(method: str) -> PeftConverter:
    if method not in _CONVERTERS:
        raise UnsupportedPeftAdapter(
            f"method {method!r} has no HF peft equivalent; peft-format export covers {', '.join(sorted(_CONVERTERS))}. "
            f"To serve it elsewhere, merge it into the base (`peftlab merge`) if it is mergeable"
        )
    return _CONVERTERS[method]


def converter_for_peft(document: dict[str, Any]) -> PeftConverter:
    peft_type = document.get("peft_type")
    candidates = [c for c in _CONVERTERS.values() if c.peft_type == peft_type and c.claims(document)]
    if not candidates:
        known = sorted({c.peft_type for c in _CONVERTERS.values()})
        raise UnsupportedPeftAdapter(
            f"peft adapter type {peft_type!r} (with these options) is not one peftlab reads; it reads {', '.join(known)}"
        )
    return candidates[0]


def supported_methods() -> list[str]:
    return sorted(_CONVERTERS)


def peft_field(document: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A field of a peft ``adapter_config.json``, type-checked, with an error naming the field."""
    if name not in document or document[name] is None:
        if default is ...:
            raise AdapterFileError(f"{CONFIG_NAME}: required field {name!r} is missing")
        return default
    value = document[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise AdapterFileError(f"{CONFIG_NAME}: field {name!r} must be {names}, not {value!r}")
    return value


def refuse(document: dict[str, Any], name: str, allowed: tuple[Any, ...], why: str) -> None:
    """Raise when a peft option is set to something peftlab cannot reproduce."""
    value = document.get(name)
    if value not in allowed and not (isinstance(value, (dict, list)) and not value and None in allowed):
        raise UnsupportedPeftAdapter(f"{CONFIG_NAME}: {name}={value!r} is not supported: {why}")


def select_modules(names: list[str], patterns: tuple[str, ...], model_type: str | None) -> list[str]:
    """The ``names`` that peftlab target ``patterns`` (presets of ``model_type``'s family, or regex
    suffixes) select, without a model: the same matching as ``core.targeting``."""
    family = MODEL_TYPES.get(model_type or "")

    def unknown_architecture(preset: str) -> UnsupportedPeftAdapter:
        return UnsupportedPeftAdapter(f"preset {preset!r} cannot be resolved for a {model_type!r} base; save the "
                                      f"adapter with module name patterns instead")

    expanded = expand_presets(patterns, ARCHITECTURES[family] if family else None, unknown_architecture)
    regexes = [pattern_regex(pattern) for pattern in expanded]
    return [name for name in names if any(regex.fullmatch(name) for regex in regexes)]


def saved_module_tensors(tensors: dict[str, torch.Tensor], patterns: tuple[str, ...],
                         model_type: str | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors of ``modules_to_save`` modules, and the others: told apart by module, since a partial method's
    tensors are named as base parameters (``...LayerNorm.weight``), as a saved head's are (``classifier.weight``)."""
    if not patterns:
        return {}, dict(tensors)
    owners = {name: [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)] for name in tensors}
    chosen = set(select_modules(sorted({o for names in owners.values() for o in names}), patterns, model_type))
    saved = {name: t for name, t in tensors.items() if chosen.intersection(owners[name])}
    return saved, {name: t for name, t in tensors.items() if name not in saved}


def exact_patterns(modules: list[str]) -> tuple[str, ...]:
    """peftlab target patterns that select exactly these module names."""
    return tuple(re.escape(name) for name in modules)


def task_type_for(architecture: str | None, model_type: str | None) -> str | None:
    """peft's task type for a transformers head class (it selects PeftModelFor<Task>)."""
    if not architecture:
        return None
    for suffix, task in (
        ("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS"),
        ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"),
    ):
        if architecture.endswith(suffix):
            return task
    if architecture.endswith("ForConditionalGeneration") and model_type in ("t5", "mt5", "bart", "mbart"):
        return "SEQ_2_SEQ_LM"
    return None
