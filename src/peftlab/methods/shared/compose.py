"""Building a method from registered ones: inject each part with its own ``inject``, then report one
:class:`Injection`; :class:`DetachModules` takes off what a composed method added at model level.
Hybrids with a prefix part save and load through prefix-tuning's ``export_state``/``import_state``,
which pass every other adapter tensor through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from peftlab.core.config import MethodConfig, require
from peftlab.core.registry import get_method
from peftlab.core.state import Injection
from peftlab.methods.shared.prefix_attention import PrefixHandle


def inject_parts(model: nn.Module, parts: Sequence[MethodConfig]) -> list[Injection]:
    """Apply each part exactly as applying that method alone would, in order, on the same model."""
    return [get_method(part.method).inject(model, part) for part in parts]


def combine(injections: Sequence[Injection], count_trainable: Callable[[nn.Module], int] | None = None) -> Injection:
    return Injection(
        count_note="; ".join(dict.fromkeys(i.count_note for i in injections if i.count_note)),
        selected=[name for injection in injections for name in injection.selected],
        created=[name for injection in injections for name in injection.created],
        count_trainable=count_trainable,
        hooks=[hook for injection in injections for hook in injection.hooks],
    )


class DetachModules:
    """An injection hook for ``peftlab.unload``: takes prefixes off the attention layers (``handle``)
    and removes the model-level modules a method added under ``names``."""

    def __init__(self, model: nn.Module, handle: PrefixHandle | None, names: Sequence[str]) -> None:
        self.model, self.handle, self.names = model, handle, tuple(names)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        for name in self.names:
            if name in self.model._modules:
                delattr(self.model, name)


def require_parts_save_nothing(config: MethodConfig, fields: Sequence[str]) -> None:
    for field in fields:
        part = getattr(config, field)
        require(not part.modules_to_save and not part.token_indices, config, field,
                "set modules_to_save and token_indices on the hybrid itself, not on one of its parts")
