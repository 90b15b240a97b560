"""The public API behind ``import peftlab``, loaded on the first use of one of its names (``peftlab/__init__``),
so that commands which only parse their arguments (``peftlab --help``) start without torch and transformers."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab import methods as _methods  # noqa: F401  (importing it registers every method)
from peftlab import interop as _interop  # noqa: F401  (lets load_adapter read HF peft folders)
from peftlab.core.adapters import AdapterNameError, delete_adapter, disable_adapters, list_adapters, set_adapter
from peftlab.core.accounting import ParameterReport, parameter_counts, parameter_report
from peftlab.core.config import ConfigError, MethodConfig
from peftlab.core.hooks import TrainingHooks
from peftlab.core.injection import apply_config
from peftlab.core.layers import OffloadedWeightsError
from peftlab.core.merging import MergeError, MergeReport, merge, unload, unmerge
from peftlab.core.method_hooks import make_optimizer, method_report, parameter_groups, training_hooks
from peftlab.core.routing import MixedBatchError
from peftlab.core.registry import MethodSpec, all_methods, describe_all, get_method
from peftlab.core.serialization import AdapterFileError, hotswap_adapter, load_adapter, save_adapter
from peftlab.core.state import DEFAULT_ADAPTER, active_adapters, adapter_parameters, peft_state
from peftlab.core.targeting import TargetError
from peftlab.methods.reparameterized._lora_combine import CombineError, CombineReport, add_weighted_adapter
from peftlab.methods.reparameterized.adalora import rank_pattern


def apply(model: nn.Module, method: str | MethodConfig, adapter_name: str = DEFAULT_ADAPTER,
          **options: Any) -> nn.Module:
    """Apply a registered method to ``model`` in place (base frozen, method trainable); returns ``model``.

    ``method`` is a name from :func:`list_methods` with its options as keywords, or a ready config.
    ``adapter_name`` adds it beside adapters already on the model (inactive until :func:`set_adapter`).
    """
    if isinstance(method, MethodConfig):
        if options:
            raise ConfigError("pass options either inside the config or as keywords, not both")
        return apply_config(model, method, adapter_name)
    config = get_method(method).config_class.from_options(options)
    return apply_config(model, config, adapter_name)


def make_config(method: str, **options: Any) -> MethodConfig:
    """The validated config of ``method`` with ``options``, without touching a model."""
    return get_method(method).config_class.from_options(options)


def list_methods() -> list[str]:
    """Registered method names, grouped by family in the survey's order."""
    return [spec.name for spec in all_methods()]
