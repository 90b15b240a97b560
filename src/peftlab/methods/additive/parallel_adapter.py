"""Parallel adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
Learning", arXiv 2110.04366).

A bottleneck beside a whole sublayer instead of after it: with ``x`` the input of the feed-forward
(or attention) block and ``f(x)`` the block's output,
``y = f(x) + s * W_up σ(W_down x + b_down) + b_up`` (``s`` a fixed scaling, 4 in the paper's MAM).

A block is not one module in every family (BERT splits its feed-forward over ``intermediate`` and
``output``), so the adapter wraps the block's exit projection and reads ``x`` from a pass-through
tap on the block's entry projection. ``W_up``, ``b_up`` start at zero: the model starts as the base.
Not mergeable (the nonlinearity cannot be folded into a weight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from peftlab.core.architectures import architecture_of
from peftlab.core.config import MethodConfig, option, require
from peftlab.core.layers import AdapterLayer, linear_shape
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import TargetError, find_modules, replace_module
from peftlab.methods.additive.adapter import ACTIVATIONS, Bottleneck

Block = Literal["attention", "feed_forward"]

# Per family and block: (entry projection: sees the block input, exit projection: gives the block output).
BLOCKS: dict[str, dict[str, tuple[str, str]]] = {
    "bert": {
        "attention": (r"attention\.self\.query", r"attention\.output\.dense"),
        "feed_forward": (r"intermediate\.dense", r"layer\.\d+\.output\.dense"),
    },
    "t5": {
        "attention": (r"(SelfAttention|EncDecAttention)\.q", r"(SelfAttention|EncDecAttention)\.o"),
        "feed_forward": (r"DenseReluDense\.(wi|wi_0)", r"DenseReluDense\.wo"),
    },
    "llama": {
        "attention": (r"self_attn\.q_proj", r"self_attn\.o_proj"),
        "feed_forward": (r"mlp\.up_proj", r"mlp\.down_proj"),
    },
    "gpt2": {
        "attention": (r"attn\.c_attn", r"attn\.c_proj"),
        "feed_forward": (r"mlp\.c_fc", r"mlp\.c_proj"),
    },
}


@dataclass(frozen=True, kw_only=True)
class ParallelAdapterConfig(MethodConfig):
    method = "parallel_adapter"

    bottleneck_size: int = option(64, "Width m of the bottleneck (block input -> m -> hidden).")
    scaling: float = option(4.0, "Fixed scale s of the adapter's output (He et al. use 4).")
    blocks: tuple[Block, ...] = option(
        ("feed_forward",), "Blocks that get an adapter in parallel: feed_forward, attention, or both."
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = option("relu", "Nonlinearity σ inside the bottleneck.")

    def validate(self) -> None:
        require(self.bottleneck_size > 0, self, "bottleneck_size", "must be a positive integer")
        require(self.scaling > 0, self, "scaling", "must be positive")
        require(bool(self.blocks), self, "blocks", "name at least one block: feed_forward or attention")
        require(set(self.blocks) <= {"attention", "feed_forward"}, self, "blocks",
                "each entry must be feed_forward or attention")
        require(self.activation in ACTIVATIONS, self, "activation", f"must be one of {sorted(ACTIVATIONS)}")


class ParallelAdapter(AdapterLayer):
    """``y = f(x) + s * bottleneck(x)``: wraps the block's exit; ``x`` comes from its :class:`BlockInputTap`."""

    routes_rows = False  # its input was stored by the tap for the whole batch

    def __init__(self, base_layer: nn.Module, bottleneck: int, scaling: float, activation: str) -> None:
        super().__init__(base_layer)
        self.adapter = Bottleneck(self.out_features, bottleneck, activation, next(base_layer.parameters()))
        self.scaling = scaling
        self.block_input: torch.Tensor | None = None

    def adapter_forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        block_input, self.block_input = self.block_input, None  # drop the reference once used
        if block_input is None:
            raise RuntimeError("parallel adapter: the block's exit ran before its entry; the tap saw no input")
        return base_output + (self.scaling * self.adapter(block_input)).to(base_output.dtype)


class BlockInputTap(AdapterLayer):
    """Passes the block's entry projection through unchanged and hands its input to the adapter."""

    def __init__(self, base_layer: nn.Module, reader: ParallelAdapter) -> None:
        super().__init__(base_layer)
        self.__dict__["reader"] = reader  # a plain reference, not a submodule: the adapter lives at the exit

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.reader.block_input = x
        return self.base_layer(x, *args, **kwargs)


def block_pairs(model: nn.Module, block: str) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """``(entry name, entry, exit name, exit)`` for every instance of ``block`` in the model, in order."""
    architecture = architecture_of(model)
    if architecture is None or architecture.name not in BLOCKS:
        raise TargetError(
            f"parallel adapters know the block layout of {', '.join(BLOCKS)} models only; "
            f"this model is {getattr(getattr(model, 'config', None), 'model_type', type(model).__name__)!r}"
        )
    entry_pattern, exit_pattern = BLOCKS[architecture.name][block]
    entries, exits = find_modules(model, entry_pattern), find_modules(model, exit_pattern)
    if len(entries) != len(exits):
        raise TargetError(f"found {len(entries)} {block} inputs but {len(exits)} outputs; cannot pair them")
    for (entry_name, _), (exit_name, _) in zip(entries, exits):
        if _layer_path(entry_name) != _layer_path(exit_name):
            raise TargetError(f"{block}: {entry_name} and {exit_name} are not in the same layer")
    return [(n, m, o, e) for (n, m), (o, e) in zip(entries, exits)]


def _layer_path(name: str) -> str:
    """The name up to its last layer index: ``encoder.block.0.layer.1.DenseReluDense.wo`` -> ``...layer.1``."""
    match = re.match(r"(.*\.\d+)(?:\.|$)", name)
    return match.group(1) if match else ""


def add_parallel_adapters(model: nn.Module, config: ParallelAdapterConfig) -> list[ParallelAdapter]:
    adapters = []
    for block in config.blocks:
        for entry_name, entry, exit_name, exit in block_pairs(model, block):
            if linear_shape(entry)[0] != linear_shape(exit)[1]:
                raise TargetError(f"{entry_name} takes {linear_shape(entry)[0]} features but {exit_name} "
                                  f"gives {linear_shape(exit)[1]}: a parallel adapter needs them equal")
            adapter = ParallelAdapter(exit, config.bottleneck_size, config.scaling, config.activation)
            replace_module(model, exit_name, adapter)
            replace_module(model, entry_name, BlockInputTap(entry, adapter))
            adapters.append(adapter)
    return adapters


def inject(model: nn.Module, config: ParallelAdapterConfig) -> Injection:
    add_parallel_adapters(model, config)
    return Injection()


register(MethodSpec(
    name="parallel_adapter",
    family="additive",
    config_class=ParallelAdapterConfig,
    inject=inject,
    paper="He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv 2110.04366)",
    summary="Scaled bottleneck adapter in parallel with the feed-forward (or attention) block.",
))
