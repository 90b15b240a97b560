"""peftlab: parameter-efficient fine-tuning of pretrained transformers, with the survey's assessment built in.

    import peftlab
    model = peftlab.apply(model, "lora", rank=8, target_modules="attention_qv")
    peftlab.save_adapter(model, "out/adapter")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError",
    "AdapterNameError",
    "CombineError",
    "CombineReport",
    "ConfigError",
    "MergeError",
    "MergeReport",
    "MethodConfig",
    "MethodSpec",
    "MixedBatchError",
    "OffloadedWeightsError",
    "ParameterReport",
    "TargetError",
    "TrainingHooks",
    "active_adapters",
    "adapter_parameters",
    "add_weighted_adapter",
    "all_methods",
    "apply",
    "delete_adapter",
    "describe_all",
    "disable_adapters",
    "get_method",
    "hotswap_adapter",
    "list_adapters",
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
    "set_adapter",
    "training_hooks",
    "unload",
    "unmerge",
]


def __getattr__(name: str) -> Any:
    """``peftlab.apply`` and the rest of ``__all__``, imported on first use (PEP 562): importing ``peftlab`` or
    one of its subpackages costs nothing until then, so ``peftlab --help`` answers at once."""
    if name in __all__:
        from peftlab import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
