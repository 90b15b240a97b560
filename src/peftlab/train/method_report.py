"""What a method's trained state says about the run, for ``metrics.json``: AdaLoRA's final per-layer ranks.

The core's training hooks have no report yet; when they gain one (or ``peftlab`` exports
``rank_pattern``), this module becomes a call to it.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def method_report(model: nn.Module, method: str) -> dict[str, Any]:
    """Fields for the run's metrics: for AdaLoRA ``rank_pattern`` (module -> kept rank) and ``total_rank``;
    nothing for other methods."""
    if method != "adalora":
        return {}
    from peftlab.methods.reparameterized.adalora import rank_pattern

    ranks = rank_pattern(model)
    return {"rank_pattern": ranks, "total_rank": sum(ranks.values())}
