"""What a method's trained state says about the run, for ``metrics.json``: the same ``report`` that
``save_adapter`` writes into ``adapter_config.json`` (AdaLoRA: its final per-layer ranks)."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab.core.registry import get_method


def method_report(model: nn.Module, method: str) -> dict[str, Any]:
    """The method's ``extra["report"](model)`` fields, or nothing for methods without one."""
    reporter = get_method(method).extra.get("report")
    return reporter(model) if reporter is not None else {}
