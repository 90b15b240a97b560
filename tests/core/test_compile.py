"""Regional compilation computes the eager step's loss and gradients, and is undone exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import peftlab
from conftest import BUILDERS, assert_same_nonzero_grads, batch_for
from peftlab.core.compile import block_classes, compile_blocks, is_compiled, uncompile_blocks
from peftlab.core.fused_ops import fuse, unfuse
from peftlab.core.losses import lm_loss


def _adapter_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in peftlab.adapter_parameters(model)}


@pytest.mark.parametrize("method,options", [
    ("lora", {"target_modules": "all_linear"}),
    ("prefix_tuning", {"num_virtual_tokens": 3, "reparameterize": False}),  # attention stays eager, per layer
])
def test_compiled_blocks_give_the_eager_loss_and_gradients_and_are_undone(method, options):
    eager = peftlab.apply(BUILDERS["llama"]().train(), method, **options)  # no dropout in LLaMA
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(eager):
            parameter.add_(0.05)
    compiled = copy.deepcopy(eager)
    assert block_classes(compiled) == {"LlamaDecoderLayer"}
    assert compile_blocks(compiled) == len(compiled.model.layers) == 2
    assert compile_blocks(compiled) == 0  # already compiled
    assert fuse(compiled) == 1  # only the final norm: the compiler fuses what is inside the blocks
    for length in (10, 7):  # a second length: one more compilation, with dynamic shapes
        batch = batch_for(eager, batch=2, length=length, seed=length)
        batch["attention_mask"][0, :2] = 0  # padding
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
        expected = lm_loss(eager, batch)
        expected.backward()
        loss = lm_loss(compiled, batch)
        loss.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        assert_same_nonzero_grads(_adapter_grads(compiled), _adapter_grads(eager))
    unfuse(compiled)
    uncompile_blocks(compiled)
    assert not any(is_compiled(module) for module in compiled.modules())


def test_a_model_without_declared_blocks_compiles_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert block_classes(model) == set() and compile_blocks(model) == 0
