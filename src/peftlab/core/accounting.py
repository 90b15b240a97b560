"""Parameter accounting as the survey reports it: trainable, total, and trainable as % of the base."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn

from peftlab.core.layers import AdapterModule
from peftlab.core.state import adapter_parameters, peft_state


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int
    base: int
    note: str = ""  # how the method counts, when not every trainable tensor counts in full

    @property
    def trainable_percent(self) -> float:
        """Trainable parameters as a percentage of the base model's parameters (the survey's column)."""
        return 100.0 * self.trainable / self.base if self.base else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "trainable_percent": self.trainable_percent}

    def __str__(self) -> str:
        line = f"trainable {self.trainable:,} || total {self.total:,} || trainable% of base {self.trainable_percent:.4f}"
        return f"{line} ({self.note})" if self.note else line


def logical_shape(parameter: nn.Parameter) -> tuple[int, ...]:
    """The shape a parameter stands for; 4-bit packed weights (bitsandbytes) report their unpacked shape,
    or the layout of the layer they replaced (``peftlab_storage_shape``, e.g. GPT-2's ``Conv1D``)."""
    storage_shape = getattr(parameter, "peftlab_storage_shape", None)
    if storage_shape is not None:
        return tuple(storage_shape)
    quant_state = getattr(parameter, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return tuple(quant_state.shape)
    return tuple(parameter.shape)


def numel(parameter: nn.Parameter) -> int:
    """Logical element count; 4-bit packed weights report the shape they stand for."""
    return math.prod(logical_shape(parameter))


def parameter_report(model: nn.Module) -> ParameterReport:
    total = sum(numel(p) for p in model.parameters())
    added = sum(numel(p) for module in model.modules() if isinstance(module, AdapterModule)
                for _, p in module.adapter_parameters())
    state = peft_state(model)
    if state is None:
        trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
        return ParameterReport(trainable=trainable, total=total, base=total)
    created = dict(model.named_parameters())
    created_numel = sum(numel(created[name]) for name in state.injection.created)
    own = created_numel + sum(numel(p) for module in model.modules()  # the adapter in use, as if alone on the base
                              if isinstance(module, AdapterModule) and module.adapter_name == state.name
                              for _, p in module.adapter_parameters())
    if state.injection.count_trainable is not None:
        trainable = state.injection.count_trainable(model)
    else:
        trainable = sum(numel(p) for _, p in adapter_parameters(model))
    base = total - added - created_numel
    return ParameterReport(trainable=trainable, total=base + own, base=base, note=state.injection.count_note)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of a model, adapted or not."""
    report = parameter_report(model)
    return report.trainable, report.total
