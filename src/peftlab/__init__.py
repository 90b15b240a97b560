"""peftlab: parameter-efficient fine-tuning of pretrained transformers, with the survey's assessment built in.

    import peftlab
    model = peftlab.apply(model, "lora", rank=8, target_modules="attention_qv")
    peftlab.save_adapter(model, "out/adapter")
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab import methods as _methods  # noqa: F401  (importing it registers every method)
from peftlab import interop as _interop  # noqa: F401  (lets load_adapter read HF peft folders)
from peftlab.core.accounting import ParameterReport, parameter_counts, parameter_report
from peftlab.core.config import ConfigError, MethodConfig
from peftlab.core.hooks import TrainingHooks
from peftlab.core.injection import apply_config
from peftlab.core.layers import OffloadedWeightsError
from peftlab.core.merging import MergeError, MergeReport, merge, unload, unmerge
from peftlab.core.method_hooks import make_optimizer, method_report, parameter_groups, training_hooks
from peftlab.core.registry import MethodSpec, all_methods, describe_all, get_method
from peftlab.core.serialization import AdapterFileError, load_adapter, save_adapter
from peftlab.core.state import adapter_parameters, peft_state
from peftlab.core.targeting import TargetError
from peftlab.methods.reparameterized.adalora import rank_pattern

__version__ = "0.1.0"


def apply(model: nn.Module, method: str | MethodConfig, **options: Any) -> nn.Module:
    """Apply a registered method to ``model`` in place (base frozen, method trainable); returns ``model``.

    ``method`` is a name from :func:`list_methods` with its options as keywords, or a ready config.
    """
    if isinstance(method, MethodConfig):
        if options:
            raise ConfigError("pass options either inside the config or as keywords, not both")
        return apply_config(model, method)
    config = get_method(method).config_class.from_options(options)
    return apply_config(model, config)


def make_config(method: str, **options: Any) -> MethodConfig:
    """The validated config of ``method`` with ``options``, without touching a model."""
    return get_method(method).config_class.from_options(options)


def list_methods() -> list[str]:
    """Registered method names, grouped by family in the survey's order."""
    return [spec.name for spec in all_methods()]


__all__ = [
    "AdapterFileError",
    "ConfigError",
    "MergeError",
    "MergeReport",
    "MethodConfig",
    "MethodSpec",
    "ParameterReport",
    "OffloadedWeightsError",
    "TargetError",
    "TrainingHooks",
    "adapter_parameters",
    "all_methods",
    "apply",
    "describe_all",
    "get_method",
    "list_methods",
    "load_adapter",
    "make_config",
    "make_optimizer",
    "merge",
    "method_report",
    "parameter_counts",
    "parameter_groups",
    "parameter_report",
    "peft_state",
    "rank_pattern",
    "save_adapter",
    "training_hooks",
    "unload",
    "unmerge",
]
