"""LoRA against its formula, written out by hand: y = W x + b + (alpha / r) B A x."""

import torch

import peftlab
from conftest import tiny_gpt2, tiny_llama


def test_lora_layer_matches_the_formula():
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4, alpha=12.0)
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 32)
    W = layer.base_layer.weight
    expected = x @ W.T + (12.0 / 4) * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_lora_on_gpt2_conv1d_uses_the_transposed_weight():
    model = peftlab.apply(tiny_gpt2().eval(), "lora", rank=2, alpha=2.0)
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 32)
    conv = layer.base_layer  # Conv1D stores (in, out)
    expected = x @ conv.weight + conv.bias + (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B @ layer.lora_A)


def test_lora_initialisation_b_zero_a_nonzero():
    model = peftlab.apply(tiny_llama(), "lora", rank=4)
    layer = model.model.layers[1].self_attn.v_proj
    assert layer.lora_B.abs().sum() == 0 and layer.lora_A.abs().sum() > 0
    assert layer.lora_A.shape == (4, 32) and layer.lora_B.shape == (16, 4)


def test_dropout_zero_does_no_dropout_work():
    model = peftlab.apply(tiny_llama(), "lora", dropout=0.0)
    assert isinstance(model.model.layers[0].self_attn.q_proj.dropout, torch.nn.Identity)
