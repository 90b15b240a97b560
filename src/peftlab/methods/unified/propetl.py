"""ProPETL: one prototype network, many masks (Zeng et al. 2023, "One Network, Many Masks: Towards
More Parameter-Efficient Transfer Learning", arXiv 2305.17682).

One prototype module per shape is shared by every layer (the same tensors); layer ``l`` uses it
through its own binary masks, ``W_l = W ⊙ M_l``. ``M_l`` keeps the ``keep_ratio`` share of entries with
the largest ``|S_l|``, where ``S_l`` are real-valued scores learned with the straight-through
estimator: the forward pass sees the hard 0/1 mask, the backward pass gives ``dL/dS = dL/dM · sign(S)``.

    adapter: y = h + (W_up ⊙ M_up) σ((W_down ⊙ M_down) h + b_down) + b_up,  h = f(x)   (sequential)
    lora:    y = W x + (α / r) (B ⊙ M_B) (A ⊙ M_A) x
    prefix:  head = softmax(q [P_k ⊙ M_k; K]^T / √d + [0; M]) [P_v ⊙ M_v; V]

Parameter count as the paper reports it: the prototype plus every mask at 1 bit per entry (1/32 of an
fp32 parameter). The scores are a training device and are not counted; a saved adapter keeps the
prototype and the masks only, packed 8 entries per byte. Loading sets each score to 1 where the mask
keeps an entry and 0.5 where it drops one, which reproduces the masks exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import linear_shape
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.serialization import AdapterFileError
from peftlab.core.state import Injection, adapter_parameters
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.additive.adapter import PLACEMENTS, Bottleneck
from peftlab.methods.shared.compose import DetachModules
from peftlab.methods.shared.prefix_attention import (
    PrefixHandle,
    attach_prefixes,
    attention_module_names,
    discover_sites,
)
from peftlab.methods.unified._propetl_layers import (
    LoRAPrototype,
    Masked,
    MaskedAdapter,
    MaskedLoRA,
    MaskedPrefix,
    MaskedPrefixes,
    PrefixPrototype,
    Prototypes,
)

PROTOTYPES_NAME = "propetl_prototypes"
PREFIXES_NAME = "propetl_prefixes"
MASK_SUFFIX = ".mask_bits"


PROTOTYPE_OPTIONS = {"adapter": ("bottleneck_size", "placement"), "lora": ("rank", "alpha", "target_modules"),
                     "prefix": ("num_virtual_tokens",)}


@dataclass(frozen=True, kw_only=True)
class ProPETLConfig(MethodConfig):
    method = "propetl"

    prototype: Literal["adapter", "lora", "prefix"] = option(
        "adapter", "The shared module: a sequential adapter, a LoRA update, or attention prefixes."
    )
    keep_ratio: float = option(0.5, "Share of the prototype's entries each layer's mask keeps (0 < k <= 1).")
    score_lr_ratio: float = option(
        10.0, "Learning rate of the mask scores relative to the prototype's (used by parameter_groups)."
    )
    bottleneck_size: int = option(64, "adapter prototype: bottleneck width m.")
    placement: Literal["houlsby", "pfeiffer"] = option(
        "pfeiffer", "adapter prototype: after the feed-forward (pfeiffer, the paper's) or also after attention."
    )
    rank: int = option(8, "lora prototype: rank r.")
    alpha: float = option(16.0, "lora prototype: the update is scaled by alpha / r.")
    target_modules: tuple[str, ...] = option(("attention_qv",), "lora prototype: linear layers to adapt.")
    num_virtual_tokens: int = option(10, "prefix prototype: prefix length P.")

    def validate(self) -> None:
        require(self.prototype in ("adapter", "lora", "prefix"), self, "prototype", "must be adapter, lora or prefix")
        require(0.0 < self.keep_ratio <= 1.0, self, "keep_ratio", "must be in (0, 1]")
        require(self.score_lr_ratio > 0, self, "score_lr_ratio", "must be positive")
        require(self.bottleneck_size > 0, self, "bottleneck_size", "must be a positive integer")
        require(self.placement in PLACEMENTS, self, "placement", f"must be one of {sorted(PLACEMENTS)}")
        require(self.rank > 0, self, "rank", "must be a positive integer")
        require(self.alpha > 0, self, "alpha", "must be positive")
        require(self.num_virtual_tokens > 0, self, "num_virtual_tokens", "must be a positive integer")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = [name for prototype, names in PROTOTYPE_OPTIONS.items() if prototype != self.prototype
                  for name in names if getattr(self, name) != defaults[name]]
        require(not unused, self, unused[0] if unused else "prototype",
                f"only the {next((p for p, n in PROTOTYPE_OPTIONS.items() if unused and unused[0] in n), '')} "
                f"prototype uses it and this one is {self.prototype!r}: set prototype= or drop the option")


def _inject_adapter(model: nn.Module, config: ProPETLConfig, prototypes: Prototypes) -> None:
    for name, module in find_modules(model, PLACEMENTS[config.placement]):
        features, like = linear_shape(module)[1], next(module.parameters())
        prototype = prototypes.get(
            f"adapter_{features}", lambda: Bottleneck(features, config.bottleneck_size, "relu", like)
        )
        replace_module(model, name, MaskedAdapter(module, prototype, config.keep_ratio))


def _inject_lora(model: nn.Module, config: ProPETLConfig, prototypes: Prototypes) -> None:
    for name, module in find_modules(model, config.target_modules):
        (fan_in, fan_out), like = linear_shape(module), next(module.parameters())
        prototype = prototypes.get(
            f"lora_{fan_in}x{fan_out}", lambda: LoRAPrototype(fan_in, fan_out, config.rank, like)
        )
        replace_module(model, name, MaskedLoRA(module, prototype, config.alpha / config.rank, config.keep_ratio))


def _inject_prefix(model: nn.Module, config: ProPETLConfig, prototypes: Prototypes) -> PrefixHandle:
    sites = discover_sites(model, attention_module_names(model))
    like = model.get_input_embeddings().weight
    layers = MaskedPrefixes()
    for site in sites:
        key = f"prefix_{site.kv_heads}x{site.key_dim}x{site.value_dim}"
        prototype = prototypes.get(key, lambda: PrefixPrototype(site, config.num_virtual_tokens, like))
        layers.append(MaskedPrefix(site, prototype, config.keep_ratio))
    model.add_module(PREFIXES_NAME, layers)
    return attach_prefixes(model, sites, layers.key_values)


INJECTORS = {"adapter": _inject_adapter, "lora": _inject_lora, "prefix": _inject_prefix}


# -- accounting, compact save/load, optimizer groups ---------------------------------------------
def masked_modules(model: nn.Module) -> Iterator[tuple[str, Masked]]:
    for name, module in model.named_modules():
        if isinstance(module, Masked):
            yield name, module


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [score for _, module in masked_modules(model) for score in module.scores.values()]


def count_trainable(model: nn.Module) -> int:
    """Prototype (and any other trained parameter) in full, plus the masks at 1 bit (1/32 parameter) each."""
    scores = {id(p) for p in score_parameters(model)}
    full = sum(p.numel() for _, p in adapter_parameters(model) if id(p) not in scores)
    mask_bits = sum(p.numel() for p in score_parameters(model))
    return full + math.ceil(mask_bits / 32)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A 0/1 tensor as uint8, 8 entries per byte (most significant bit first)."""
    bits = mask.flatten().to(torch.uint8)
    bits = F.pad(bits, (0, (-bits.numel()) % 8)).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (bits * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed[:, None] >> shifts) & 1
    return bits.flatten()[: math.prod(shape)].view(shape)


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Prototypes and other trained tensors as they are; each layer's scores as its packed mask."""
    scores = {id(p) for p in score_parameters(model)}
    tensors = {name: p.detach() for name, p in adapter_parameters(model) if id(p) not in scores}
    for module_name, module in masked_modules(model):
        for key, mask in module.masks().items():
            tensors[f"{module_name}.scores.{key}{MASK_SUFFIX}"] = pack_bits(mask)
    return tensors


def import_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load prototypes; rebuild each layer's scores from its mask (1 kept, 0.5 dropped: same masks)."""
    scores = {id(p) for p in score_parameters(model)}
    expected = {name: ("tensor", p) for name, p in adapter_parameters(model) if id(p) not in scores}
    for module_name, module in masked_modules(model):
        for key, score in module.scores.items():
            expected[f"{module_name}.scores.{key}{MASK_SUFFIX}"] = ("mask", score)
    if set(expected) != set(tensors):
        raise AdapterFileError(
            f"the propetl adapter does not fit this model: it holds {sorted(set(tensors) - set(expected))[:5]} "
            f"and lacks {sorted(set(expected) - set(tensors))[:5]}; was it trained on another base model?"
        )
    with torch.no_grad():
        for name, (kind, target) in expected.items():
            tensor = tensors[name]
            if kind == "mask":
                if tensor.numel() != math.ceil(target.numel() / 8):
                    raise AdapterFileError(f"propetl mask {name} does not fit a tensor of shape {tuple(target.shape)}")
                tensor = 0.5 + 0.5 * unpack_bits(tensor.to(target.device), target.shape).to(target.dtype)
            elif tensor.shape != target.shape:
                raise AdapterFileError(
                    f"propetl tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}"
                )
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


def parameter_groups(model: nn.Module, config: ProPETLConfig, lr: float, weight_decay: float) -> list[dict]:
    """The scores learn ``score_lr_ratio`` times faster than the prototype (the paper's mask learning rate)."""
    scores = score_parameters(model)
    ids = {id(p) for p in scores}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [
        {"params": others, "lr": lr, "weight_decay": weight_decay},
        {"params": scores, "lr": lr * config.score_lr_ratio, "weight_decay": 0.0},
    ]


def inject(model: nn.Module, config: ProPETLConfig) -> Injection:
    prototypes = Prototypes()
    handle = INJECTORS[config.prototype](model, config, prototypes)
    model.add_module(PROTOTYPES_NAME, prototypes)
    detach = DetachModules(model, handle, (PROTOTYPES_NAME, PREFIXES_NAME))
    return Injection(count_trainable=count_trainable, hooks=[detach],
                     count_note="masks counted at 1 bit per entry, as the paper counts them")


register(MethodSpec(
    name="propetl",
    family="unified",
    config_class=ProPETLConfig,
    inject=inject,
    paper="Zeng et al. 2023, One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning "
          "(arXiv 2305.17682)",
    summary="One prototype (adapter, LoRA or prefix) shared by all layers through learned per-layer binary "
            "masks; counts the prototype plus 1 bit per mask entry, saves masks packed.",
    hooks=MethodHooks(export_state=export_state, import_state=import_state, parameter_groups=parameter_groups),
))
