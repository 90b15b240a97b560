"""ProPETL's layers: a prototype shared by every layer, seen by each layer through its own binary masks.

``W_l = W ⊙ M_l``, with ``M_l`` the hard top-``keep_ratio`` mask of the layer's scores ``|S_l|`` and the
straight-through estimator for their gradient. ``propetl.py`` has the formulas, the paper and the injection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterLayer, AdapterModule, tensor_options
from peftlab.methods.additive.adapter import Bottleneck
from peftlab.methods.shared.prefix_attention import Site


def binary_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """1 for the ``keep_ratio`` share of entries with the largest ``|scores|``, else 0; the gradient
    passes straight through to the scores (``hard + (a - a.detach())`` is exactly ``hard``)."""
    magnitude = scores.abs()
    kept = scores.numel() - int((1.0 - keep_ratio) * scores.numel())
    with torch.no_grad():
        hard = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        hard[magnitude.flatten().topk(kept).indices] = 1.0
    return hard.view_as(scores) + (magnitude - magnitude.detach())


class Masked:
    """Mixin for a layer's view of a shared prototype: its own scores, one per masked prototype tensor."""

    scores: nn.ParameterDict
    keep_ratio: float

    def _add_scores(self, prototype: nn.Module, names: tuple[str, ...], keep_ratio: float) -> None:
        self.__dict__["prototype"] = prototype  # shared: registered once, under PROTOTYPES_NAME
        self.keep_ratio = keep_ratio
        self.scores = nn.ParameterDict()
        for name in names:
            tensor = prototype.get_parameter(name)
            score = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
            nn.init.kaiming_uniform_(score, a=math.sqrt(5))
            self.scores[name.replace(".", "_")] = nn.Parameter(score)

    def effective(self, name: str) -> torch.Tensor:
        """``prototype[name] ⊙ mask``: this layer's weight."""
        mask = binary_mask(self.scores[name.replace(".", "_")], self.keep_ratio)
        weight = self.prototype.get_parameter(name)
        return weight * mask.to(weight.dtype)

    def masks(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {key: binary_mask(score, self.keep_ratio) for key, score in self.scores.items()}


class MaskedAdapter(AdapterLayer, Masked):
    """``y = h + up_M(σ(down_M(h)))`` with the shared :class:`Bottleneck`'s weights masked for this layer."""

    def __init__(self, base_layer: nn.Module, prototype: Bottleneck, keep_ratio: float) -> None:
        super().__init__(base_layer)
        self._add_scores(prototype, ("down.weight", "up.weight"), keep_ratio)

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        proto = self.prototype
        h = base_output.to(proto.down.weight.dtype)
        hidden = proto.activation(F.linear(h, self.effective("down.weight"), proto.down.bias))
        return base_output + F.linear(hidden, self.effective("up.weight"), proto.up.bias).to(base_output.dtype)


class LoRAPrototype(nn.Module):
    """``A`` (r x in) Kaiming-uniform, ``B`` (out x r) zero: shared by every layer of this shape."""

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        factory = tensor_options(like)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


class MaskedLoRA(AdapterLayer, Masked):
    """``y = base(x) + scaling * (B ⊙ M_B)(A ⊙ M_A) x``."""

    def __init__(self, base_layer: nn.Module, prototype: LoRAPrototype, scaling: float, keep_ratio: float) -> None:
        super().__init__(base_layer)
        self._add_scores(prototype, ("lora_A", "lora_B"), keep_ratio)
        self.scaling = scaling

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        a, b = self.effective("lora_A"), self.effective("lora_B")
        update = F.linear(F.linear(x.to(a.dtype), a), b)
        return base_output + (update * self.scaling).to(base_output.dtype)


class PrefixPrototype(nn.Module):
    """Prefix keys and values ``(P, kv_heads * (key_dim + value_dim))``, shared by every attention layer."""

    def __init__(self, site: Site, length: int, like: torch.Tensor) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.randn(length, site.width, dtype=like.dtype, device=like.device))


class MaskedPrefix(AdapterModule, Masked):
    """One attention layer's masked view of the shared prefix."""

    def __init__(self, site: Site, prototype: PrefixPrototype, keep_ratio: float) -> None:
        super().__init__()
        self.site = site
        self._add_scores(prototype, ("prefix",), keep_ratio)

    def key_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, kv_heads, P, key_dim)`` keys and ``(1, kv_heads, P, value_dim)`` values."""
        rows, site = self.effective("prefix"), self.site
        split = site.kv_heads * site.key_dim
        keys = rows[:, :split].unflatten(1, (site.kv_heads, site.key_dim)).transpose(0, 1)
        values = rows[:, split:].unflatten(1, (site.kv_heads, site.value_dim)).transpose(0, 1)
        return keys[None], values[None]


class MaskedPrefixes(nn.ModuleList):
    """The provider for :func:`attach_prefixes`: site ``index`` attends to its masked prefix."""

    def key_values(self, index: int, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self[index].key_values()


class Prototypes(AdapterModule):
    """The shared prototypes, one per shape, registered once on the model."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.ModuleDict()

    def get(self, key: str, build: Callable[[], nn.Module]) -> nn.Module:
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]
