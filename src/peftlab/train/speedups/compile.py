"""Regional compilation: ``torch.compile`` each transformer block, not the whole model.

The blocks of one model share their code, so one compiled graph serves them all (a second for a block
whose input needs no gradient, as the first one's under most adapters), and the compiler fuses the
element-wise work between the matrix products: rotary embeddings, norms, the gated activation, the
adapter's scaling and residual additions. The matrix products themselves are unchanged, so the step
computes the same function (tests compare loss and gradients with the eager step); only dropout draws
its masks from the compiler's own random stream, so a model with dropout sees other masks than eager.

    compile_blocks(model)   # returns how many blocks; the first steps compile (seconds per graph)
    uncompile_blocks(model) # the blocks' eager forward again

The blocks are the classes a ``transformers`` model lists in ``_no_split_modules``. The training step
should not build a KV cache (``use_cache=False``): a cache object in the blocks' inputs makes the
compiler specialise each block on its layer index. Sequence lengths that vary from batch to batch
cost one more compilation, with dynamic shapes, after which any length reuses it.
"""

from __future__ import annotations

from torch import nn


def block_classes(model: nn.Module) -> set[str]:
    """Names of the repeated block classes ``model`` declares (``LlamaDecoderLayer``, ``T5Block``, ...)."""
    return {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}


def compile_blocks(model: nn.Module) -> int:
    """Compile every transformer block of ``model`` in place; returns how many (0: none recognised)."""
    names = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names and not is_compiled(m)]
    for block in blocks:
        block.compile()
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    for module in model.modules():
        if is_compiled(module):
            module._compiled_call_impl = None


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def inside_compiled_block(model: nn.Module) -> set[int]:
    """``id`` of every module within a compiled block (the compiler fuses those: leave them eager)."""
    return {id(inner) for module in model.modules() if is_compiled(module) for inner in module.modules()}
