"""Regional compilation computes the eager step's loss and gradients, and is undone exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM

import peftlab
from conftest import BUILDERS, assert_same_nonzero_grads, batch_for
from peftlab.train.speedups.compile import block_classes, compile_blocks, is_compiled, uncompile_blocks
from peftlab.train.speedups.fused_ops import fuse, unfuse
from peftlab.train.speedups.losses import lm_loss


def _adapter_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in peftlab.adapter_parameters(model)}


@pytest.mark.parametrize("method,options", [
    ("lora", {"target_modules": "all_linear"}),
    ("prefix_tuning", {"num_virtual_tokens": 3, "reparameterize": False}),  # prefix attention compiled in
    ("prefix_tuning", {"num_virtual_tokens": 3}),  # through the MLP
    ("unipelt", {}),  # a gated prefix: its attention runs eagerly between the compiled halves
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


@pytest.mark.parametrize("reparameterize", [False, True])
def test_prefix_attention_compiles_into_one_graph_for_every_layer(reparameterize):
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = peftlab.apply(LlamaForCausalLM(config).train(), "prefix_tuning", num_virtual_tokens=3,
                          reparameterize=reparameterize)
    compile_blocks(model)
    torch._dynamo.reset()
    counters.clear()
    lm_loss(model, batch_for(model, batch=2, length=9)).backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    # one graph for the first block (its input needs no gradient) and one for the other three
    assert counters["stats"]["unique_graphs"] == 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in peftlab.adapter_parameters(model))


def test_a_model_without_declared_blocks_compiles_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert block_classes(model) == set() and compile_blocks(model) == 0
