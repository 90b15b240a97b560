"""What ``peftlab select`` searches: a method, its options and its learning rate, one trial at a time.

Each method's space is data: option paths (``lora.rank`` is the ``rank`` of a hybrid's ``lora`` part) and
their choices, smallest first, so the first choice of each is the method's smallest configuration (the
budget check before the search asks whether that one fits). ``layers`` is the search's own option: ``upper``
narrows the part's target modules to the upper half of the model's layers, ``all`` keeps them all.

Free compositions are UniPELT's and MAM's parts (adapter, prefix, LoRA) at chosen sizes and layers: peftlab
composes methods only through those hybrids, so a composition always carries all of a hybrid's parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.core.registry import get_method

LAYERS = ("upper", "all")
TARGETS = ("attention_qv", "attention", "all_linear")

SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "bitfit": {},
    "ia3": {},
    "prompt_tuning": {"num_virtual_tokens": (5, 10, 20, 50)},
    "prefix_tuning": {"num_virtual_tokens": (5, 10, 20, 30)},
    "lora": {"rank": (1, 2, 4, 8, 16), "target_modules": TARGETS, "layers": LAYERS},
    "adapter": {"bottleneck_size": (4, 8, 16, 32, 64), "placement": ("pfeiffer", "houlsby"), "layers": LAYERS},
    "parallel_adapter": {"bottleneck_size": (4, 8, 16, 32, 64)},
    "mam": {"prefix.num_virtual_tokens": (5, 10, 30), "adapter.bottleneck_size": (8, 32, 128, 512)},
    "unipelt": {"adapter.bottleneck_size": (4, 16, 48), "adapter.layers": LAYERS,
                "prefix.num_virtual_tokens": (5, 10), "lora.rank": (1, 4, 8), "lora.layers": LAYERS},
}

# Learning-rate priors: log-uniform within a factor of 3 of E1's SST-2 rate (benchmarks/assessment/suites/
# e1-glue.yaml, chosen on the held-out split); parallel_adapter takes the adapter's and unipelt (not in E1)
# LoRA's.
LEARNING_RATES: dict[str, float] = {
    "bitfit": 3e-3, "ia3": 1e-2, "prompt_tuning": 3e-3, "prefix_tuning": 3e-4, "lora": 3e-3, "adapter": 3e-3,
    "parallel_adapter": 3e-3, "mam": 3e-4, "unipelt": 3e-3,
}
LEARNING_RATE_SPREAD = 3.0

Narrow = Callable[[Sequence[str]], list[str]]  # target presets or patterns -> those of the upper layers


@dataclass(frozen=True)
class Candidate:
    """One configuration: what ``peftlab train --method M --set ... --lr LR`` would train."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-3


def suggest(trial: Any, methods: Sequence[str], narrow: Narrow) -> Candidate:
    """The trial's configuration, drawn by the study's sampler (parameter names are prefixed by the method,
    so each method's options form their own conditional space)."""
    method = trial.suggest_categorical("method", list(methods))
    rate = LEARNING_RATES[method]
    learning_rate = trial.suggest_float(f"{method}.lr", rate / LEARNING_RATE_SPREAD, rate * LEARNING_RATE_SPREAD,
                                        log=True)
    chosen = {path: trial.suggest_categorical(f"{method}.{path}", list(choices))
              for path, choices in SPACES[method].items()}
    return build(method, chosen, learning_rate, narrow)


def smallest(method: str, narrow: Narrow) -> Candidate:
    """The method's smallest configuration in the space: the first choice of each option."""
    chosen = {path: choices[0] for path, choices in SPACES[method].items()}
    return build(method, chosen, LEARNING_RATES[method], narrow)


def build(method: str, chosen: dict[str, Any], learning_rate: float, narrow: Narrow) -> Candidate:
    """The method's options from the chosen ``path: value`` pairs, with ``layers`` turned into target patterns."""
    options: dict[str, Any] = {}
    narrowed: list[tuple[str, ...]] = []
    for path, value in chosen.items():
        *parts, key = path.split(".")
        place = options
        for part in parts:
            place = place.setdefault(part, {})
        if key == "layers":
            if value == "upper":
                narrowed.append(tuple(parts))
        else:
            place[key] = value
    for parts in narrowed:
        config: MethodConfig = get_method(method).config_class.from_options(options)
        for part in parts:
            config = getattr(config, part)
        place = options
        for part in parts:
            place = place[part]
        place["target_modules"] = narrow(_targets(config))
    return Candidate(method, options, learning_rate)


def _targets(config: MethodConfig) -> tuple[str, ...]:
    """The target modules a config resolves to (an adapter's follow its placement unless overridden)."""
    return tuple(getattr(config, "targets", None) or config.target_modules)
